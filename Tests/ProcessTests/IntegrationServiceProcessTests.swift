// Integration services between real viridian-host and viridian-agent processes (and a real chronyd).

import Foundation
import Glibc
import HostRuntime
import Testing

/// An agent configuration file in the fixture's directory.
func agentConfig(_ fixture: HostFixture, _ extra: String) throws -> String {
    let path = fixture.directory.appendingPathComponent("agent-\(UUID().uuidString.prefix(6)).toml").path
    let text = """
        link = "\(fixture.link("guest1"))"
        state_dir = "\(fixture.directory.path)/state"
        log_level = "notice"
        \(extra)
        """
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

func run(_ executable: String, _ arguments: [String], seconds: Double = 60) throws -> (Int32, String) {
    let child = try Child(executable, arguments)
    let code = child.wait(seconds: seconds) ?? -1
    return (code, child.text)
}

@Suite("Integration services between processes", .serialized)
struct IntegrationServiceProcessTests {
    @Test("Heartbeat: OK, lost on SIGSTOP within 3 intervals, OK again on SIGCONT")
    func heartbeat() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\nheartbeat_interval_ms = 200\n")
        let agent = try Child("viridian-agent", ["run", "--config", try agentConfig(fixture, "timesync = \"off\"")])
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].heartbeat == "ok" })
        agent.signal(SIGSTOP)
        let stopped = Date()
        #expect(try eventually(seconds: 3) { try fixture.status().partitions[0].heartbeat == "lost" })
        #expect(Date().timeIntervalSince(stopped) <= 0.6 + 0.5, "lost within 3 intervals (plus polling and scheduling)")
        agent.signal(SIGCONT)
        #expect(try eventually(seconds: 3) { try fixture.status().partitions[0].heartbeat == "ok" })
        #expect(fixture.host.text.contains("heartbeat ok → late") && fixture.host.text.contains("heartbeat late → lost")
                && fixture.host.text.contains("heartbeat lost → ok"), "\(fixture.host.text)")
    }

    @Test("Shutdown: the configured action runs, and a failing action is reported to the host")
    func shutdown() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        let marker = fixture.directory.appendingPathComponent("marker").path
        let agent = try Child("viridian-agent", ["run", "--config", try agentConfig(fixture, """
            timesync = "off"
            poweroff_command = "echo poweroff > \(marker)"
            reboot_command = "exit 3"
            """)])
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].heartbeat == "ok" })
        let control = ["--runtime-dir", fixture.directory.path]
        let (ok, text) = try run("viridian-host", ["shutdown", "guest1", "--reason", "maintenance"] + control)
        #expect(ok == 0, "\(text)")
        #expect((try? String(contentsOfFile: marker, encoding: .utf8)) == "poweroff\n")
        let (failed, failure) = try run("viridian-host", ["reboot", "guest1"] + control)
        #expect(failed != 0 && failure.contains("the guest reported failure"), "\(failure)")
        #expect(agent.text.contains("host asks for poweroff: maintenance"), "\(agent.text)")
    }

    @Test("KVP: intrinsic values match the system; host-set keys survive an agent restart")
    func kvp() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        let configPath = try agentConfig(fixture, "timesync = \"off\"")
        var agent: Child? = try Child("viridian-agent", ["run", "--config", configPath])
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].heartbeat == "ok" })
        let control = ["--runtime-dir", fixture.directory.path]
        let (code, json) = try run("viridian-host", ["kvp", "get", "guest1", "--json"] + control)
        #expect(code == 0, "\(json)")
        let values = try JSONDecoder().decode([String: String].self, from: Data(json.utf8))

        // What the system says, read here independently.
        let osRelease = try String(contentsOfFile: "/etc/os-release", encoding: .utf8)
        let name = osRelease.split(separator: "\n").first { $0.hasPrefix("NAME=") }.map { $0.dropFirst(5).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
        let (_, release) = try run("/usr/bin/uname", ["-r"])
        let (_, machine) = try run("/usr/bin/uname", ["-m"])
        let (_, addresses) = try run("/usr/sbin/ip", ["-o", "-4", "addr", "show"])
        let v4 = addresses.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: " ")
            guard f.count > 3, f[1] != "lo", !f[1].hasPrefix("docker"), !f[1].hasPrefix("veth"), !f[1].hasPrefix("virbr") else { return nil }
            return f[3].split(separator: "/").first.map(String.init)
        }
        #expect(values["OSName"] == name)
        #expect(values["OSBuildNumber"] == release.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(values["ProcessorArchitecture"] == machine.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(Set((values["NetworkAddressIPv4"] ?? "").split(separator: ";").map(String.init)) == Set(v4))
        #expect(values["IntegrationServicesVersion"] == "3.1" && values["FullyQualifiedDomainName"]?.isEmpty == false)

        #expect(try run("viridian-host", ["kvp", "set", "guest1", "Rack", "B-07 ✓"] + control).0 == 0)
        #expect(try run("viridian-host", ["kvp", "set", "guest1", "Doomed", "x"] + control).0 == 0)
        #expect(try run("viridian-host", ["kvp", "delete", "guest1", "Doomed"] + control).0 == 0)
        let (tooLong, why) = try run("viridian-host", ["kvp", "set", "guest1", String(repeating: "k", count: 300), "v"] + control)
        #expect(tooLong != 0 && why.contains("exceeds 512"), "\(why)")

        agent?.signal(SIGTERM)
        #expect(agent?.wait(seconds: 10) == 0)
        agent = try Child("viridian-agent", ["run", "--config", configPath])
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].heartbeat == "ok" })
        let (listed, list) = try run("viridian-host", ["kvp", "list", "guest1"] + control)
        #expect(listed == 0 && list.contains("Rack=B-07 ✓") && !list.contains("Doomed"), "\(list)")
        let (_, local) = try run("viridian-agent", ["kvp", "list", "--config", configPath])
        #expect(local.contains("Rack=B-07 ✓"), "\(local)")
        _ = agent
    }

    @Test("Time sync feeds chronyd's SOCK refclock: its offset is the injected one within 1 ms")
    func chrony() throws {
        // scripts/test-tools.sh (make test-deps) unpacks chrony into .cache/tools without installing it.
        let unpacked = GuestImage.root.appendingPathComponent(".cache/tools/chrony/usr").path
        let (chronydPath, chronycPath) = FileManager.default.isExecutableFile(atPath: "\(unpacked)/sbin/chronyd")
            ? ("\(unpacked)/sbin/chronyd", "\(unpacked)/bin/chronyc") : ("/usr/sbin/chronyd", "/usr/bin/chronyc")
        guard FileManager.default.isExecutableFile(atPath: chronydPath) else {
            Issue.record("no chronyd: make test-deps unpacks it into .cache/tools/chrony")
            return
        }
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\ntimesync_interval_ms = 200\ntime_offset_ms = 250\n")
        // chronyd wants its command socket in a directory only its user can reach. The refclock is
        // `noselect`: with -x chronyd's null clock driver would absorb a selected source's offset, so
        // later samples would read ~0; unselected, it keeps reporting the raw offset it measures.
        let dir = fixture.directory.appendingPathComponent("chrony").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o700)
        try """
            refclock SOCK \(dir)/refclock.sock refid HYPV poll 0 filter 8 noselect
            pidfile \(dir)/chronyd.pid
            bindcmdaddress \(dir)/chronyd.sock
            driftfile \(dir)/drift
            """.write(toFile: "\(dir)/chrony.conf", atomically: true, encoding: .utf8)
        // -x: never touch this machine's clock; -d: stay in the foreground (the test owns it).
        let chronyd = try Child(chronydPath, ["-x", "-d", "-u", "root", "-f", "\(dir)/chrony.conf", "-L", "0"])
        defer {
            chronyd.signal(SIGTERM)
            chronyd.wait(seconds: 5)
        }
        try waitFor(path: "\(dir)/refclock.sock")
        let agent = try Child("viridian-agent", ["run", "--config", try agentConfig(fixture, """
            timesync = "chrony"
            chrony_socket = "\(dir)/refclock.sock"
            """)])
        var offset: Double?
        _ = try eventually(seconds: 30) {
            let (code, csv) = try run(chronycPath, ["-h", "\(dir)/chronyd.sock", "-c", "sources"], seconds: 5)
            // Fields: mode, state, name, stratum, poll, reach, last rx, adjusted offset, measured offset, error.
            guard code == 0, let line = csv.split(separator: "\n").first(where: { $0.contains("HYPV") }) else { return false }
            let fields = line.split(separator: ",")
            guard fields.count >= 9, let reach = Int(fields[5], radix: 8), reach.nonzeroBitCount >= 4 else { return false }
            offset = Double(fields[8])
            return true
        }
        let (_, verbose) = try run(chronycPath, ["-h", "\(dir)/chronyd.sock", "sources", "-v"], seconds: 5)
        #expect(verbose.contains("HYPV"), "\(verbose)")
        // chrony reports local minus reference: the host is 250 ms ahead, so the local clock is 250 ms behind.
        let measured = try #require(offset)
        print("timesync: chrony measured \(measured) s for an injected host offset of +0.250 s")
        #expect(abs(measured + 0.250) <= 0.001, "chrony offset \(measured) s, injected +0.250 s; \(verbose)")
        _ = agent
    }
}
