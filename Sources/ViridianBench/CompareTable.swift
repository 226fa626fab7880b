// viridian-bench compare: the report as text for a terminal.

extension CompareReport {
    /// The results table, the ratios per workload and how to read them.
    public func table() -> String {
        var lines = ["Viridian: direct vs enlightened (VMBus) vs emulated DMA (PIIX4 IDE/DEC 21140) vs emulated PIO (ATA PIO/NE2000); "
            + "\(settings.seconds) s per run, median (min–max) of \(settings.repetitions); Linux \(kernel), \(cpus) CPUs", ""]
        var rows = [["workload", "path", "metric median (min–max)", "p50 / p99 latency", "CPU µs/I/O", "traps/I/O", "IRQs/I/O"]]
        for w in workloads {
            for path in ComparePath.allCases {
                guard let s = summary(w.id, path) else { continue }
                let metric: String
                if let median = s.median, let low = s.min, let high = s.max {
                    metric = CompareFormat.range(median: median, min: low, max: high, w.unit)
                        + (s.failedRuns > 0 ? " [\(s.failedRuns) failed]" : "")
                } else {
                    metric = s.failedRuns > 0 ? "failed" : "–"
                }
                let latency = s.latencyP50Us == nil && s.latencyP99Us == nil
                    ? "–" : "\(CompareFormat.latency(s.latencyP50Us)) / \(CompareFormat.latency(s.latencyP99Us))"
                rows.append([path == .direct ? w.title : "", path.rawValue, metric, latency,
                             CompareFormat.number(s.cpuMicrosecondsPerIO), CompareFormat.number(s.trapsPerIO), CompareFormat.number(s.interruptsPerIO)])
            }
        }
        lines += Self.columns(rows, rightAligned: [4, 5, 6])
        lines.append("")
        var ratioRows = [["ratios of the medians", "enlightened/emulated-dma", "enlightened/emulated-pio", "emulated-dma/emulated-pio",
                          "enlightened/direct", "traps/I/O dma/enlightened", "traps/I/O pio/dma"]]
        /// A ratio, and for latencies which way it goes.
        func ratio(_ value: Double?, _ advantage: Double?, higherIsBetter: Bool) -> String {
            var text = CompareFormat.ratio(value)
            if !higherIsBetter, let advantage {
                text += advantage >= 1 ? " (\(CompareFormat.digits(advantage))× faster)" : " (\(CompareFormat.digits(1 / advantage))× slower)"
            }
            return text
        }
        for r in ratios {
            guard let w = workload(r.workload) else { continue }
            ratioRows.append([w.title + (w.higherIsBetter ? "" : " (lower is better)"),
                              ratio(r.enlightenedOverEmulatedDMA, r.enlightenedAdvantageOverDMA, higherIsBetter: r.higherIsBetter),
                              ratio(r.enlightenedOverEmulatedPIO, r.enlightenedAdvantageOverPIO, higherIsBetter: r.higherIsBetter),
                              ratio(r.emulatedDMAOverEmulatedPIO, r.dmaAdvantageOverPIO, higherIsBetter: r.higherIsBetter),
                              CompareFormat.ratio(r.enlightenedOverDirect), CompareFormat.ratio(r.emulatedDMAOverEnlightenedTrapsPerIO),
                              CompareFormat.ratio(r.emulatedPIOOverEmulatedDMATrapsPerIO)])
        }
        lines += Self.columns(ratioRows, rightAligned: [])
        lines.append("")
        lines += notes.map { "• " + $0 }
        return lines.joined(separator: "\n")
    }

    /// Rows as columns padded to their widest cell, two spaces apart; a rule under the header.
    static func columns(_ rows: [[String]], rightAligned: Set<Int>) -> [String] {
        guard let header = rows.first else { return [] }
        let widths = header.indices.map { i in rows.map { $0[i].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in
                let fill = String(repeating: " ", count: widths[i] - cell.count)
                return rightAligned.contains(i) ? fill + cell : cell + fill
            }.joined(separator: "  ").trimmingTrailingSpaces()
        }
        return [line(header), String(repeating: "─", count: widths.reduce(0, +) + 2 * (widths.count - 1))] + rows.dropFirst().map(line)
    }
}

extension String {
    fileprivate func trimmingTrailingSpaces() -> String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
