// Starts viridian-host and viridian-agent as real processes for end-to-end tests.

import Foundation
import Glibc
import HostRuntime
import Testing

/// The directory holding the built executables (next to the test bundle).
let productsDirectory: URL = {
    var url = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    if url.lastPathComponent.hasSuffix(".xctest") { url = url.deletingLastPathComponent() }
    return url
}()

/// A running child process with captured output.
final class Child: @unchecked Sendable {
    let process = Process()
    let output: URL

    init(_ executable: String, _ arguments: [String]) throws {
        let binary = executable.hasPrefix("/") ? URL(fileURLWithPath: executable) : productsDirectory.appendingPathComponent(executable)
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw HarnessError.missing("\(binary.path) is not built (swift build first)")
        }
        output = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-\(binary.lastPathComponent)-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        process.executableURL = binary
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var text: String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }

    /// Waits for exit (up to `seconds`); returns the status, or nil on timeout.
    @discardableResult
    func wait(seconds: Double = 60) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// Signals the child while it runs (never a pid that may have been reused after it exited).
    func signal(_ sig: Int32) { if process.isRunning { kill(process.processIdentifier, sig) } }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: output)
    }
}

enum HarnessError: Error, CustomStringConvertible {
    case missing(String)
    case timeout(String)
    var description: String {
        switch self {
        case .missing(let s), .timeout(let s): s
        }
    }
}

/// A host with its own runtime directory and configuration.
final class HostFixture: @unchecked Sendable {
    let directory: URL
    let host: Child

    init(config: String) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-e2e-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let configPath = directory.appendingPathComponent("host.toml")
        try ("runtime_dir = \"\(directory.path)\"\nimage_dir = \"\(directory.path)/images\"\n" + config)
            .write(to: configPath, atomically: true, encoding: .utf8)
        host = try Child("viridian-host", ["run", "--config", configPath.path, "--log-level", "info"])
        try waitFor(path: directory.appendingPathComponent("host.sock").path)
    }

    deinit {
        host.signal(SIGKILL)
        host.wait(seconds: 5)
        try? FileManager.default.removeItem(at: directory)
    }

    func link(_ partition: String) -> String { "unix:\(directory.path)/\(partition).sock" }

    func agent(_ arguments: [String], partition: String = "guest1") throws -> Child {
        try Child("viridian-agent", arguments + ["--link", link(partition), "--log-level", "warning"])
    }

    func status() throws -> HostStatus {
        try ViridianHostService.queryStatus(controlPath: directory.appendingPathComponent("host.sock").path)
    }
}

func waitFor(path: String, seconds: Double = 30) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while !FileManager.default.fileExists(atPath: path) {
        guard Date() < deadline else { throw HarnessError.timeout("\(path) did not appear") }
        usleep(20_000)
    }
}

/// Polls `condition` until true or `seconds` pass.
func eventually(seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        usleep(20_000)
    }
    return try condition()
}
