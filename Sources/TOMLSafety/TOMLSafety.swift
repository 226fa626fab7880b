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
    /// Throws for a table header whose first key character is not a bare-key character or quote.
    /// (An array of arrays continued on a line of its own that starts with `[]` is refused too.)
    public static func check(_ text: String) throws(TOMLSafetyError) {
        var number = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            var rest = line.drop { $0 == " " || $0 == "\t" }
            guard rest.first == "[" else { continue }
            rest = rest.dropFirst()
            if rest.first == "[" { rest = rest.dropFirst() }
            rest = rest.drop { $0 == " " || $0 == "\t" }
            guard let first = rest.first, first.isASCII, first.isLetter || first.isNumber || "_-\"'".contains(first) else {
                throw TOMLSafetyError(line: number, why: "a table header needs a name ([name] or [[name]])")
            }
        }
    }
}
