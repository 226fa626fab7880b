// The binaries' --version and the packages' version come from the same release number.

import Foundation
import Testing
import VMBusWire

@Suite("Release version")
struct VersionTests {
    @Test("ViridianVersion.current is the VERSION file's release (Packaging/build-debs.sh versions the .debs from it)")
    func matchesVersionFile() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("VERSION"), encoding: .utf8)
        #expect(text.trimmingCharacters(in: .whitespacesAndNewlines) == ViridianVersion.current)
        #expect(ViridianVersion.current.split(separator: ".").count == 3, "VERSION is MAJOR.MINOR.PATCH")
    }
}
