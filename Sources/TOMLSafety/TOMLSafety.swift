// Text that TOMLKit's parser (toml++) would abort on instead of reporting, refused before it sees it.

/// A TOML text refused before parsing, with the line that would have aborted the parser.
public struct TOMLSafetyError: Error, CustomStringConvertible, Equatable {
    public let line: Int
    public let why: String
    public var description: String { "line \(line): \(why)" }
}

/// toml++ (inside TOMLKit) checks some of its parser states with `assert`, which aborts the
/// process instead of throwing. A table header whose name does not start with a key character
/// ("[", "[ ]", "[[=") is one, found by the host-config fuzz target. `check` refuses those.
public enum TOMLSafety {
    /// A bare-key character (A–Z, a–z, 0–9, _ and -) or a quote.
    static func startsKey(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        case UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "\""), UInt8(ascii: "'"): true
        default: false
        }
    }

    /// Throws for a table header whose first key character is not a bare-key character or quote.
    /// (An array of arrays continued on a line of its own that starts with `[]` is refused too.)
    public static func check(_ text: String) throws(TOMLSafetyError) {
        // Bytes, not Characters: "[" followed by a combining mark is one Character, which hid the
        // bracket from the first version of this check (the fuzzer found that too).
        var number = 0
        for line in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            let blank: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
            var rest = line.drop(while: blank)
            guard rest.first == UInt8(ascii: "[") else { continue }
            rest = rest.dropFirst()
            if rest.first == UInt8(ascii: "[") { rest = rest.dropFirst() }
            rest = rest.drop(while: blank)
            guard let first = rest.first, Self.startsKey(first) else {
                throw TOMLSafetyError(line: number, why: "a table header needs a name ([name] or [[name]])")
            }
        }
    }
}
