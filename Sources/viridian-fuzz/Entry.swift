// The entry point: libFuzzer's per-input callback, or a regression runner over saved inputs.

import Foundation
import Glibc

/// Writes `text` to standard error.
func writeError(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}

#if FUZZING
// libFuzzer's driver runs the process; the target is chosen by VIRIDIAN_FUZZ_TARGET. SwiftPM links
// an executable's entry point under its own name (viridian_fuzz_main) and points main at it, so
// that name starts libFuzzer's driver (LLVMFuzzerRunDriver, part of libFuzzer since LLVM 11).

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<Int32>,
                     _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

@_cdecl("viridian_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var vector = argv
    return runFuzzerDriver(&count, &vector) { data, size in fuzzOne(data, size) }
}

/// The target named by VIRIDIAN_FUZZ_TARGET, looked up once. Unknown or missing: the list goes
/// to stderr and the process exits with status 2.
let selectedFuzzTarget: FuzzTarget = {
    let wanted = getenv("VIRIDIAN_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    if let target = FuzzTargets.named(wanted) { return target }
    let why = wanted.isEmpty ? "VIRIDIAN_FUZZ_TARGET is not set" : "unknown target '\(wanted)'"
    writeError("viridian-fuzz: \(why); set VIRIDIAN_FUZZ_TARGET to one of:\n\(FuzzTargets.listing)\n")
    exit(2)
}()

/// libFuzzer's start-up hook: the target is looked up (or the list printed) before any input runs.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?,
                           _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    _ = selectedFuzzTarget
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let target = selectedFuzzTarget
    if let data, size > 0 {
        target.run(UnsafeRawBufferPointer(start: data, count: size))
    } else {
        target.run(UnsafeRawBufferPointer(start: nil, count: 0))
    }
    return 0
}

#else

/// Regression runner: `viridian-fuzz list`, `viridian-fuzz run TARGET FILE|DIR...`.
@main
struct ViridianFuzz {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let command = arguments.first else { usage() }
        switch command {
        case "list":
            print(FuzzTargets.listing)
            exit(0)
        case "run":
            guard arguments.count >= 2 else { usage() }
            let name = arguments[1]
            guard let target = FuzzTargets.named(name) else {
                writeError("viridian-fuzz: unknown target '\(name)'; known targets:\n\(FuzzTargets.listing)\n")
                exit(2)
            }
            var files: [String] = []
            for path in arguments.dropFirst(2) {
                guard collect(path, into: &files) else {
                    writeError("viridian-fuzz: cannot read '\(path)'\n")
                    exit(2)
                }
            }
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else {
                    writeError("viridian-fuzz: cannot read '\(file)'\n")
                    exit(2)
                }
                let bytes = [UInt8](data)
                bytes.withUnsafeBytes { target.run($0) }
            }
            print("\(name): \(files.count) inputs, no crash")
            exit(0)
        default:
            usage()
        }
    }

    /// Adds `path` (a file, or every regular file under a directory, sorted) to `files`.
    static func collect(_ path: String, into files: inout [String]) -> Bool {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return false }
        guard isDirectory.boolValue else {
            files.append(path)
            return true
        }
        guard let walker = FileManager.default.enumerator(atPath: path) else { return false }
        var found: [String] = []
        while let relative = walker.nextObject() as? String {
            let full = (path as NSString).appendingPathComponent(relative)
            var sub: ObjCBool = false
            if FileManager.default.fileExists(atPath: full, isDirectory: &sub), !sub.boolValue { found.append(full) }
        }
        files += found.sorted()
        return true
    }

    static func usage() -> Never {
        writeError("""
            usage: viridian-fuzz list
                   viridian-fuzz run TARGET FILE|DIR...
            (built with -D FUZZING and -sanitize=fuzzer, the target comes from VIRIDIAN_FUZZ_TARGET)

            """)
        exit(2)
    }
}

#endif
