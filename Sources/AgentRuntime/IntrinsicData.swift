// The guest's intrinsic KVP items, read from the running system: os-release, uname, interface addresses.

import Foundation
import Glibc
import IntegrationServices

/// Builds the AUTO pool the host enumerates, in Linux's index order.
public struct IntrinsicData: Sendable {
    public var include: [String]
    public var exclude: [String]
    /// Integration-services version string reported to the host.
    public static let integrationServicesVersion = "3.1"

    public init(include: [String] = ["*"], exclude: [String] = ["docker*", "veth*", "virbr*", "lo"]) {
        self.include = include
        self.exclude = exclude
    }

    public func records() -> [KVPRecord] {
        let u = Self.uname()
        let os = Self.osRelease()
        let (v4, v6) = addresses()
        let version = os["VERSION_ID"] ?? ""
        let parts = version.split(separator: ".")
        return [
            KVPRecord(key: "FullyQualifiedDomainName", value: Self.fqdn()),
            KVPRecord(key: "IntegrationServicesVersion", value: Self.integrationServicesVersion),
            KVPRecord(key: "NetworkAddressIPv4", value: v4.joined(separator: ";")),
            KVPRecord(key: "NetworkAddressIPv6", value: v6.joined(separator: ";")),
            KVPRecord(key: "OSBuildNumber", value: u.release),
            KVPRecord(key: "OSName", value: os["NAME"] ?? u.sysname),
            KVPRecord(key: "OSMajorVersion", value: parts.first.map(String.init) ?? ""),
            KVPRecord(key: "OSMinorVersion", value: parts.count > 1 ? String(parts[1]) : ""),
            KVPRecord(key: "OSVersion", value: String(u.release.split(separator: "-").first ?? "")),
            KVPRecord(key: "ProcessorArchitecture", value: u.machine),
        ]
    }

    /// sysname, release and machine from uname(2).
    public static func uname() -> (sysname: String, release: String, machine: String) {
        var u = utsname()
        _ = Glibc.uname(&u)
        func text<T>(_ field: T) -> String {
            withUnsafeBytes(of: field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return (text(u.sysname), text(u.release), text(u.machine))
    }

    /// /etc/os-release (or /usr/lib/os-release) as a dictionary, quotes removed.
    public static func osRelease() -> [String: String] {
        let text = (try? String(contentsOfFile: "/etc/os-release", encoding: .utf8))
            ?? (try? String(contentsOfFile: "/usr/lib/os-release", encoding: .utf8)) ?? ""
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "="), !line.hasPrefix("#") else { continue }
            var value = String(line[line.index(after: eq)...])
            if value.count >= 2, let f = value.first, f == "\"" || f == "'", value.last == f { value = String(value.dropFirst().dropLast()) }
            out[String(line[..<eq])] = value
        }
        return out
    }

    /// The host name, canonicalised through the resolver when it can be.
    public static func fqdn() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, 255)
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var hints = addrinfo()
        hints.ai_flags = AI_CANONNAME
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &result) == 0, let first = result else { return name }
        defer { freeaddrinfo(result) }
        return first.pointee.ai_canonname.map { String(cString: $0) } ?? name
    }

    /// Addresses of the included interfaces (shell patterns), IPv4 and IPv6 separately.
    public func addresses() -> ([String], [String]) {
        var v4: [String] = [], v6: [String] = []
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return ([], []) }
        defer { freeifaddrs(list) }
        var cursor = list
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let addr = entry.pointee.ifa_addr else { continue }
            let name = String(cString: entry.pointee.ifa_name)
            guard wanted(interface: name) else { continue }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            let family = Int32(addr.pointee.sa_family)
            guard family == AF_INET || family == AF_INET6 else { continue }
            let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
            guard getnameinfo(addr, length, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 else { continue }
            let text = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if family == AF_INET { v4.append(text) } else { v6.append(text.split(separator: "%").first.map(String.init) ?? text) }
        }
        return (v4, v6)
    }

    /// Whether an interface passes the include and exclude patterns.
    public func wanted(interface name: String) -> Bool {
        include.contains { fnmatch($0, name, 0) == 0 } && !exclude.contains { fnmatch($0, name, 0) == 0 }
    }
}
