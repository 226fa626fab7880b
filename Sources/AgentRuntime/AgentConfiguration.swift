// viridian-agent's configuration file (/etc/viridian/agent.toml), every option with its default.

import Foundation
import TOMLKit
import VMBusWire

/// The agent's settings. Command-line options override the file; the file overrides defaults.
///
/// ```toml
/// link = "unix:/run/viridian/guest1.sock"  # how to reach the partition (PartitionLink socket)
/// reconnect = false                        # wait for the host and rejoin when it goes away
/// reconnect_interval_ms = 500              # pause between reconnect attempts
/// connect_timeout_ms = 10000               # how long to wait for VMBus negotiation and offers
/// log_level = "info"                       # trace, debug, info, notice, warning, error, critical
/// versions = ["5.3", "5.2", "5.1", "5.0", "4.1", "4.0", "3.0", "2.4"]  # VMBus versions to try, newest first
/// ```
public struct AgentConfiguration: Codable, Sendable, Equatable {
    public var link: String
    public var reconnect: Bool
    public var reconnectIntervalMs: Int
    public var connectTimeoutMs: Int
    public var logLevel: String
    public var versions: [String]?

    public static let defaultPath = "/etc/viridian/agent.toml"

    public init() {
        link = getuid() == 0 ? "unix:/run/viridian/guest1.sock" : "unix:/tmp/viridian-\(getuid())/guest1.sock"
        reconnect = false
        reconnectIntervalMs = 500
        connectTimeoutMs = 10_000
        logLevel = "info"
        versions = nil
    }

    enum CodingKeys: String, CodingKey {
        case link, reconnect, versions
        case reconnectIntervalMs = "reconnect_interval_ms"
        case connectTimeoutMs = "connect_timeout_ms"
        case logLevel = "log_level"
    }

    public init(from decoder: any Decoder) throws {
        let defaults = AgentConfiguration()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        link = try c.decodeIfPresent(String.self, forKey: .link) ?? defaults.link
        reconnect = try c.decodeIfPresent(Bool.self, forKey: .reconnect) ?? defaults.reconnect
        reconnectIntervalMs = try c.decodeIfPresent(Int.self, forKey: .reconnectIntervalMs) ?? defaults.reconnectIntervalMs
        connectTimeoutMs = try c.decodeIfPresent(Int.self, forKey: .connectTimeoutMs) ?? defaults.connectTimeoutMs
        logLevel = try c.decodeIfPresent(String.self, forKey: .logLevel) ?? defaults.logLevel
        versions = try c.decodeIfPresent([String].self, forKey: .versions)
    }

    /// Reads `path`; a missing file at the default path means defaults, elsewhere it is an error.
    public static func load(path: String?) throws -> AgentConfiguration {
        let file = path ?? defaultPath
        guard FileManager.default.fileExists(atPath: file) else {
            if path == nil { return AgentConfiguration() }
            throw AgentError.configuration("no configuration file at \(file)")
        }
        let config = try TOMLDecoder().decode(AgentConfiguration.self, from: try String(contentsOfFile: file, encoding: .utf8))
        try config.validate()
        return config
    }

    public func validate() throws {
        guard reconnectIntervalMs >= 10 else { throw AgentError.configuration("reconnect_interval_ms must be at least 10") }
        guard connectTimeoutMs >= 100 else { throw AgentError.configuration("connect_timeout_ms must be at least 100") }
        _ = try parsedVersions()
    }

    public func parsedVersions() throws -> [VMBusVersion] {
        guard let versions else { return VMBusVersion.linuxPreference }
        do { return try versions.map { try VMBusVersion(parsing: $0) } } catch {
            throw AgentError.configuration("versions: bad entry in \(versions): use MAJOR.MINOR, e.g. 5.3")
        }
    }
}

/// Errors of the agent, in the user's terms.
public enum AgentError: Error, CustomStringConvertible, Equatable {
    case configuration(String)
    case timeout(String)
    case hostGone(String)
    case protocolFailure(String)

    public var description: String {
        switch self {
        case .configuration(let s): "configuration: \(s)"
        case .timeout(let s): "timed out: \(s)"
        case .hostGone(let s): "host gone: \(s)"
        case .protocolFailure(let s): s
        }
    }
}
