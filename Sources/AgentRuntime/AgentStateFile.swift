// The small JSON files through which a running agent tells `disk list` and `nic list` what it serves.

import Foundation
import Glibc

/// Writes one state file whole or not at all: the JSON goes to a temporary file that is then
/// renamed over the old one, so a reader never sees half a file.
enum AgentStateFile {
    static func write<T: Encodable>(_ value: T, to path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let temporary = path + ".tmp"
        try JSONEncoder().encode(value).write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, path) == 0 else { throw AgentError.protocolFailure("cannot record \(path): errno \(errno)") }
    }
}

/// The VMBus devices the running agent joined with, for `viridian-agent list --running` (the
/// carrier admits one agent at a time, so a second process cannot join to look).
public enum DeviceListState {
    public static func statePath(_ stateDir: String) -> String { stateDir + "/devices.json" }

    /// Records `session`'s devices in `stateDir`.
    public static func record(_ session: AgentSession, stateDir: String) throws {
        try AgentStateFile.write(session.devices(), to: statePath(stateDir))
    }

    /// Removes the record (the agent stopped serving).
    public static func remove(stateDir: String) { unlink(statePath(stateDir)) }
}
