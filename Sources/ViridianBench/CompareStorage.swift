// viridian-bench compare, storage: the same fio jobs on the image file (direct), on the agent's NBD
// export of the SCSI LUN (enlightened) and on its export of the IDE master (emulated: PIIX4 DMA, ATA PIO).

import Foundation

extension CompareSession {
    /// One fio job shape.
    struct FioJob {
        var workload: CompareWorkload
        var rw: String
        var blockSize: String
        var depth: Int
        /// The direction fio reports the job under.
        var direction: String { rw.contains("write") ? "write" : "read" }
    }

    static let fioJobs = [
        FioJob(workload: .seqRead, rw: "read", blockSize: "1M", depth: 8),
        FioJob(workload: .seqWrite, rw: "write", blockSize: "1M", depth: 8),
        FioJob(workload: .randRead, rw: "randread", blockSize: "4k", depth: 32),
    ]

    /// Prefills the image, then per path: brings up its stack, runs every job --repeat times, stops the stack.
    /// Paths run one after another on the same image, so no two ever serve it at once.
    func runStorage() throws {
        let image = "\(rig.directory)/disk.img"
        progress.note("prefilling a \(settings.imageMiB) MiB image at \(image)")
        let fill = try rig.execute("fio", fioPath, ["--name=fill", "--filename=\(image)", "--size=\(settings.imageMiB)M", "--rw=write",
                                                "--bs=1M", "--ioengine=psync"], timeout: 600)
        guard fill.status == 0 else { throw BenchError.setup("fio could not prefill \(image): \(fill.errors)") }
        for path in ComparePath.allCases {
            var stack: CompareStack?
            let target: [String]
            do {
                switch path {
                case .direct:
                    target = ["--filename=\(image)", "--ioengine=io_uring"]
                case .enlightened, .emulatedDMA, .emulatedPIO:
                    progress.note("starting viridian-host and viridian-agent\(path.isEmulated ? " --no-enlightenments" : "") for the \(path.rawValue) disk")
                    let started = try CompareStack.start(rig: rig, binDirectory: binDirectory, path: path, device: .disk(image: image))
                    stack = started
                    guard let socket = started.exportSocket() else { throw BenchError.setup("the export socket vanished") }
                    target = ["--ioengine=nbd", "--uri=nbd+unix:///?socket=\(socket)"]
                }
            } catch {
                try fail(.storage, path: path, error)
                continue
            }
            defer { stack?.stop() }
            for run in 1...settings.repetitions {
                for job in Self.fioJobs {
                    try measure(job.workload, path, run: run, stack: stack) { try runFio(job, path: path, target: target) }
                }
            }
        }
    }

    /// One time-based fio run. The timeout leaves room for the requests in flight when --runtime ends:
    /// up to 8 MiB at the emulated disk's few hundred KB/s.
    func runFio(_ job: FioJob, path: ComparePath, target: [String]) throws -> CompareMeasurement {
        let arguments = ["--name=\(path.rawValue)-\(job.workload.id)"] + target + [
            "--rw=\(job.rw)", "--bs=\(job.blockSize)", "--iodepth=\(job.depth)", "--size=\(settings.imageMiB)M",
            "--runtime=\(settings.seconds)", "--time_based", "--output-format=json",
        ]
        let (status, output, errors) = try rig.execute("fio", fioPath, arguments, timeout: Double(settings.seconds) + 300)
        guard status == 0 else {
            throw BenchError.setup("fio \(arguments.joined(separator: " ")) failed (\(status)): \(errors.suffix(1000))")
        }
        let d = try FioOutput.parse(output).direction(job.direction)
        let ios = d.totalIOs ?? d.ioBytes / (job.blockSize == "1M" ? 1_048_576 : 4096)
        guard ios > 0 else { throw BenchError.setup("fio completed no I/O in \(settings.seconds) s") }
        return CompareMeasurement(
            value: job.workload.unit == .operationsPerSecond ? d.iops : d.bandwidthBytes, ios: ios, bytes: d.ioBytes,
            bytesPerSecond: d.bandwidthBytes, iops: d.iops, latencyP50Us: d.percentileMicroseconds(50), latencyP99Us: d.percentileMicroseconds(99))
    }
}
