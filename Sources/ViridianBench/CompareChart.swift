// viridian-bench compare: the report as a self-contained SVG chart — grouped bars per workload, one per
// path, on a log axis relative to the direct path, each labelled with its value.

import Foundation

extension CompareReport {
    /// The chart as SVG text: no scripts, fonts, images or styles from elsewhere.
    public func svg() -> String {
        CompareChart(report: self).render()
    }
}

/// Lays out and draws the chart.
struct CompareChart {
    let report: CompareReport

    static let colors: [ComparePath: String] = [.direct: "#8c8c8c", .enlightened: "#40826d", .emulatedDMA: "#d9822b", .emulatedPIO: "#a33b3b"]
    static let legend: [ComparePath: String] = [
        .direct: "direct (no VMM)", .enlightened: "enlightened (VMBus)", .emulatedDMA: "emulated DMA (PIIX4 IDE, DEC 21140)",
        .emulatedPIO: "emulated PIO (ATA PIO, NE2000)",
    ]

    let left = 84.0, right = 24.0, plotHeight = 340.0, groupWidth = 176.0
    let barWidth = 34.0, barGap = 5.0
    /// The lines under the title, wrapped to the width.
    let subtitle: [String]
    var legendTop: Double { 44 + 15 * Double(subtitle.count) }
    var plotTop: Double { legendTop + 44 }
    var plotBottom: Double { plotTop + plotHeight }
    let width: Double
    var height: Double { plotBottom + 76 }

    init(report: CompareReport) {
        self.report = report
        let s = report.settings
        let text = "Median of \(s.repetitions) run\(s.repetitions == 1 ? "" : "s") × \(s.seconds) s per workload and path, as a multiple of the direct path "
            + "on a log scale (latency inverted, so higher is better everywhere). Whiskers: min–max. Labels: median values. "
            + "Linux \(report.kernel), \(report.cpus) CPUs, \(report.date)."
        width = Swift.max(640, left + Double(Swift.max(report.workloads.count, 1)) * groupWidth + right)
        subtitle = Self.wrap(text, characters: Int((width - left - right) / 6.2))
    }

    /// Splits `text` at spaces into lines of at most `characters`.
    static func wrap(_ text: String, characters: Int) -> [String] {
        var lines: [String] = [], line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > characters {
                lines.append(line)
                line = ""
            }
            line += (line.isEmpty ? "" : " ") + word
        }
        return line.isEmpty ? lines : lines + [line]
    }

    /// A bar: the median and spread relative to the direct path (latencies inverted: higher is better).
    struct Bar {
        var path: ComparePath
        var summary: CompareSummary
        var relative: Double
        var relativeLow: Double
        var relativeHigh: Double
    }

    /// The bars of one workload; a path without a positive median has none.
    func bars(_ w: CompareWorkload) -> [Bar] {
        let medians = ComparePath.allCases.compactMap { report.summary(w.id, $0)?.median }.filter { $0 > 0 }
        let best = w.higherIsBetter ? medians.max() : medians.min()
        guard let reference = report.summary(w.id, .direct)?.median.flatMap({ $0 > 0 ? $0 : nil }) ?? best else { return [] }
        func relative(_ v: Double) -> Double { w.higherIsBetter ? v / reference : reference / v }
        return ComparePath.allCases.compactMap { path in
            guard let s = report.summary(w.id, path), let median = s.median, median > 0 else { return nil }
            let a = relative(Swift.max(s.min ?? median, Double.leastNonzeroMagnitude)), b = relative(s.max ?? median)
            return Bar(path: path, summary: s, relative: relative(median), relativeLow: Swift.min(a, b), relativeHigh: Swift.max(a, b))
        }
    }

    /// The axis: decades from `low` to `high` (log10 of the relative value).
    func axis(_ all: [[Bar]]) -> (low: Double, high: Double) {
        let values = all.flatMap { $0.flatMap { [$0.relativeLow, $0.relativeHigh] } }.filter { $0 > 0 && $0.isFinite }
        let smallest = log10(values.min() ?? 0.1), largest = log10(values.max() ?? 1)
        let low = Swift.min(floor(smallest - 0.15), -1)
        let high = Swift.max(largest, 0) + 0.35
        return (low, Swift.max(high, low + 1))
    }

    func render() -> String {
        let groups = report.workloads.map { ($0, bars($0)) }
        let (low, high) = axis(groups.map(\.1))
        func y(_ relative: Double) -> Double {
            plotTop + plotHeight * (high - log10(Swift.max(relative, 1e-300))) / (high - low)
        }
        var svg = SVGText(width: width, height: height)
        svg.rect(x: 0, y: 0, width: width, height: height, fill: "#ffffff")
        title(&svg)
        // Decade grid and labels.
        for decade in Int(ceil(low))...Int(floor(high)) {
            let gy = y(pow(10, Double(decade)))
            svg.line(x1: left, y1: gy, x2: width - right, y2: gy, stroke: decade == 0 ? "#555555" : "#dddddd",
                     width: decade == 0 ? 1.2 : 1, dash: decade == 0 ? "5 3" : nil)
            svg.text(Self.decadeLabel(decade), x: left - 8, y: gy + 4, size: 11, anchor: "end", fill: "#444444")
        }
        svg.line(x1: left, y1: plotTop, x2: left, y2: plotBottom, stroke: "#444444", width: 1)
        svg.line(x1: left, y1: plotBottom, x2: width - right, y2: plotBottom, stroke: "#444444", width: 1)
        svg.text("relative to direct (×, log scale)", x: 20, y: plotTop + plotHeight / 2, size: 12, anchor: "middle",
                 fill: "#444444", rotate: true)
        sections(&svg)
        for (index, (workload, bars)) in groups.enumerated() {
            group(&svg, workload, bars, x: left + Double(index) * groupWidth, y: y)
        }
        return svg.finish()
    }

    private func title(_ svg: inout SVGText) {
        svg.text("Viridian: enlightened vs emulated I/O", x: left, y: 28, size: 18, weight: "bold", fill: "#222222")
        for (i, line) in subtitle.enumerated() {
            svg.text(line, x: left, y: 48 + 15 * Double(i), size: 11, fill: "#555555")
        }
        var x = left
        for path in ComparePath.allCases {
            svg.rect(x: x, y: legendTop + 4, width: 12, height: 12, fill: Self.colors[path] ?? "#000000")
            let label = Self.legend[path] ?? path.rawValue
            svg.text(label, x: x + 17, y: legendTop + 14.5, size: 12, fill: "#222222")
            x += 17 + Double(label.count) * 6.8 + 22
        }
    }

    /// Section names above their groups, a dashed line between sections.
    private func sections(_ svg: inout SVGText) {
        var start = 0
        for section in CompareSection.allCases {
            let count = report.workloads.filter { $0.section == section }.count
            guard count > 0 else { continue }
            let x0 = left + Double(start) * groupWidth
            if start > 0 { svg.line(x1: x0, y1: plotTop - 18, x2: x0, y2: plotBottom + 60, stroke: "#bbbbbb", width: 1, dash: "4 4") }
            let name = section == .storage ? "storage (fio)" : "network (iperf3 TCP, ping)"
            svg.text(name, x: x0 + Double(count) * groupWidth / 2, y: plotTop - 8, size: 12, anchor: "middle", weight: "bold", fill: "#444444")
            start += count
        }
    }

    private func group(_ svg: inout SVGText, _ w: CompareWorkload, _ bars: [Bar], x: Double, y: (Double) -> Double) {
        let paths = Double(ComparePath.allCases.count)
        let span = paths * barWidth + (paths - 1) * barGap
        for (i, path) in ComparePath.allCases.enumerated() {
            let bx = x + (groupWidth - span) / 2 + Double(i) * (barWidth + barGap), center = bx + barWidth / 2
            guard let bar = bars.first(where: { $0.path == path }), let median = bar.summary.median else {
                svg.text("n/a", x: center, y: plotBottom - 6, size: 11, anchor: "middle", fill: "#999999")
                continue
            }
            let top = Swift.min(y(bar.relative), plotBottom - 1)
            svg.rect(x: bx, y: top, width: barWidth, height: plotBottom - top, fill: Self.colors[path] ?? "#000000",
                     tooltip: tooltip(w, bar))
            let whiskerTop = y(bar.relativeHigh), whiskerBottom = y(bar.relativeLow)
            if whiskerBottom - whiskerTop > 1 {
                svg.line(x1: center, y1: whiskerTop, x2: center, y2: whiskerBottom, stroke: "#222222", width: 1)
                svg.line(x1: center - 5, y1: whiskerTop, x2: center + 5, y2: whiskerTop, stroke: "#222222", width: 1)
                svg.line(x1: center - 5, y1: whiskerBottom, x2: center + 5, y2: whiskerBottom, stroke: "#222222", width: 1)
            }
            let label = CompareFormat.value(median, w.unit)
            let length = Double(label.count) * 6.3
            if plotBottom - top > length + 14 {
                svg.text(label, x: center + 4, y: top + 7, size: 11, anchor: "end", fill: "#ffffff", rotate: true)
            } else {
                svg.text(label, x: center + 4, y: Swift.min(top, whiskerTop) - 5, size: 11, anchor: "start", fill: "#222222", rotate: true)
            }
        }
        let mid = x + groupWidth / 2
        svg.text(w.title, x: mid, y: plotBottom + 18, size: 12, anchor: "middle", weight: "bold", fill: "#222222")
        guard let ratio = report.ratios.first(where: { $0.workload == w.id }) else { return }
        if let dma = ratio.enlightenedAdvantageOverDMA {
            svg.text("enlightened \(CompareFormat.digits(dma))× DMA", x: mid, y: plotBottom + 34, size: 10, anchor: "middle",
                     fill: Self.colors[.enlightened] ?? "#000000")
        }
        if let pio = ratio.dmaAdvantageOverPIO {
            svg.text("DMA \(CompareFormat.digits(pio))× PIO", x: mid, y: plotBottom + 49, size: 10, anchor: "middle",
                     fill: Self.colors[.emulatedDMA] ?? "#000000")
        }
    }

    /// Hover text of a bar: every summary number.
    private func tooltip(_ w: CompareWorkload, _ bar: Bar) -> String {
        let s = bar.summary
        var parts = ["\(bar.path.rawValue), \(w.title): \(w.metric) "
            + CompareFormat.range(median: s.median ?? 0, min: s.min ?? 0, max: s.max ?? 0, w.unit),
                     "\(CompareFormat.digits(bar.relative))× direct" + (w.higherIsBetter ? "" : " (inverted latency)")]
        if s.latencyP50Us != nil || s.latencyP99Us != nil {
            parts.append("p50 \(CompareFormat.latency(s.latencyP50Us)), p99 \(CompareFormat.latency(s.latencyP99Us))")
        }
        if let cpu = s.cpuMicrosecondsPerIO { parts.append("host CPU \(CompareFormat.digits(cpu)) µs/I/O") }
        if let traps = s.trapsPerIO { parts.append("\(CompareFormat.digits(traps)) traps/I/O") }
        parts.append("\(s.runs) runs" + (s.failedRuns > 0 ? ", \(s.failedRuns) failed" : ""))
        return parts.joined(separator: "; ")
    }

    /// "1×", "10×", "0.1×", "0.01×", "10⁻³×".
    static func decadeLabel(_ decade: Int) -> String {
        if (0...4).contains(decade) { return "1" + String(repeating: "0", count: decade) + "×" }
        if decade == -1 { return "0.1×" }
        if decade == -2 { return "0.01×" }
        let superscripts: [Character: Character] = [
            "-": "⁻", "0": "⁰", "1": "¹", "2": "²", "3": "³", "4": "⁴", "5": "⁵", "6": "⁶", "7": "⁷", "8": "⁸", "9": "⁹",
        ]
        return "10" + String(String(decade).map { superscripts[$0] ?? $0 }) + "×"
    }
}
