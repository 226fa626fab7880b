// The host's sockets: in a directory that is this user's own, reachable by this user only.

import Foundation
import Glibc
import HostRuntime
import Testing

@Suite("Runtime directory and socket modes")
struct RuntimeDirectoryTests {
    func scratch() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-rt-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test("A runtime directory that is a symlink, writable by others or someone else's is refused; a new one is 0700")
    func refused() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try RuntimeDirectory.prepare("\(dir)/new/run")
        var st = stat()
        #expect(lstat("\(dir)/new/run", &st) == 0 && st.st_mode & 0o777 == 0o700)
        // Someone made it first, open to all (as another user's /tmp/viridian-UID could be).
        mkdir("\(dir)/open", 0o777)
        chmod("\(dir)/open", 0o777)
        #expect(throws: RuntimeDirectory.Refused.self) { try RuntimeDirectory.prepare("\(dir)/open") }
        // A symlink to a directory elsewhere.
        symlink("\(dir)/new/run", "\(dir)/link")
        #expect(throws: RuntimeDirectory.Refused.self) { try RuntimeDirectory.prepare("\(dir)/link") }
        // Another user's (only root can hand a directory to someone else).
        if getuid() == 0 {
            mkdir("\(dir)/theirs", 0o755)
            chown("\(dir)/theirs", 65534, 65534)
            #expect(throws: RuntimeDirectory.Refused.self) { try RuntimeDirectory.prepare("\(dir)/theirs") }
        }
    }

    @Test("The partition and control sockets are mode 0600")
    func socketModes() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        for name in ["guest1.sock", "host.sock"] {
            var st = stat()
            let path = fixture.directory.appendingPathComponent(name).path
            #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600, "\(name): mode \(String(st.st_mode & 0o777, radix: 8))")
        }
    }
}
