// The release number the binaries print with --version.

/// Viridian's release, as in the repository's VERSION file (which the packages take their version
/// from; a test keeps the two equal).
public enum ViridianVersion {
    /// The release, e.g. "0.12.0".
    public static let current = "0.12.0"
}
