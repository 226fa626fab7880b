// The file `viridian-agent run --serve-children FILE` reads: the partitions this partition hosts, and which of its devices each gets.

import Foundation
import HostRuntime
import TOMLKit
import TOMLSafety

/// The children a parent-mode agent creates and serves. The same `[[partition]]` tables as the
/// root's configuration, but a child gets no files or TAPs of its own (only the root touches
/// those): its disks and NICs are this partition's own, relayed (`relay_disks`, `relay_nics`:
/// indexes into `viridian-agent disk list` and `nic list`).
///
/// ```toml
/// runtime_dir = "/run/viridian-agent/children"   # <name>.sock per child
/// [[partition]]
/// name = "grandchild"
/// memory_mib = 64
/// vps = 1
/// relay_disks = [0]
/// relay_nics = [0]
/// ```
public struct ChildrenConfiguration: Sendable, Equatable {
    /// Where the children's sockets go (default: state_dir/children).
    public var runtimeDir: String?
    public var children: [Child]

    /// One child partition.
    public struct Child: Sendable, Equatable {
        public var partition: PartitionConfiguration
        /// This partition's disks (by `disk list` position) the child gets, as its LUNs 0, 1, …
        public var relayDisks: [Int]
        /// This partition's NICs (by `nic list` index) the child gets, as its NICs 0, 1, …
        public var relayNICs: [Int]
    }

    public func socketPath(_ child: Child, stateDir: String) -> String {
        child.partition.socket ?? "\(runtimeDir ?? stateDir + "/children")/\(child.partition.name).sock"
    }

    public static func load(path: String) throws -> ChildrenConfiguration {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigurationError.invalid("\(path): \(error.localizedDescription)")
        }
        do { return try parse(text) } catch let e as ConfigurationError { throw ConfigurationError.invalid("\(path): \(e)") }
    }

    public static func parse(_ text: String) throws -> ChildrenConfiguration {
        do { try TOMLSafety.check(text) } catch { throw ConfigurationError.invalid("\(error)") }
        let file: File
        do { file = try TOMLDecoder().decode(File.self, from: text) } catch { throw ConfigurationError.invalid("\(error)") }
        let config = ChildrenConfiguration(runtimeDir: file.runtimeDir, children: (file.partition ?? []).map(\.child))
        try config.validate()
        return config
    }

    func validate() throws {
        guard !children.isEmpty else { throw ConfigurationError.invalid("at least one [[partition]] is needed") }
        var names = Set<String>()
        for child in children {
            let p = child.partition
            guard names.insert(p.name).inserted else { throw ConfigurationError.invalid("partition name '\(p.name)' is used twice") }
            try p.validate()
            guard p.carrier == "link" else { throw ConfigurationError.invalid("\(p.name): a child partition's carrier is \"link\"") }
            guard (p.disk ?? []).isEmpty, p.nic.isEmpty, p.ide.isEmpty, p.dec21140 == nil, p.ne2000 == nil else {
                throw ConfigurationError.invalid("\(p.name): a child's disks and NICs are its parent's, relayed (relay_disks, relay_nics); "
                    + "image files and TAPs (disk, nic, ide, dec21140, ne2000) are the root's")
            }
            for index in child.relayDisks + child.relayNICs where !(0..<64).contains(index) {
                throw ConfigurationError.invalid("\(p.name): relay_disks and relay_nics list indexes 0…63")
            }
        }
        for (kind, all) in [("relay_disks", children.flatMap(\.relayDisks)), ("relay_nics", children.flatMap(\.relayNICs))] {
            guard Set(all).count == all.count else { throw ConfigurationError.invalid("\(kind): a device is relayed to one child at most") }
        }
    }

    private struct File: Decodable {
        var runtimeDir: String?
        var partition: [Table]?
        enum CodingKeys: String, CodingKey {
            case runtimeDir = "runtime_dir"
            case partition
        }
    }

    private struct Table: Decodable {
        var child: Child
        enum CodingKeys: String, CodingKey {
            case relayDisks = "relay_disks"
            case relayNICs = "relay_nics"
        }
        init(from decoder: any Decoder) throws {
            var partition = try PartitionConfiguration(from: decoder)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            // No default image: a child has only what is relayed to it.
            if partition.disk == nil { partition.disk = [] }
            child = Child(partition: partition, relayDisks: try c.decodeIfPresent([Int].self, forKey: .relayDisks) ?? [],
                          relayNICs: try c.decodeIfPresent([Int].self, forKey: .relayNICs) ?? [])
        }
    }
}
