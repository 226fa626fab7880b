// A minimal SVG writer: rectangles, lines and text, escaped, in one self-contained document.

import Foundation

/// Accumulates SVG elements; `finish()` returns the document.
struct SVGText {
    private var body: [String] = []
    private let width: Double
    private let height: Double

    init(width: Double, height: Double) {
        self.width = width
        self.height = height
    }

    /// A filled rectangle, optionally with hover text.
    mutating func rect(x: Double, y: Double, width: Double, height: Double, fill: String, tooltip: String? = nil) {
        let attributes = "x=\"\(n(x))\" y=\"\(n(y))\" width=\"\(n(width))\" height=\"\(n(height))\" fill=\"\(fill)\""
        if let tooltip {
            body.append("<rect \(attributes)><title>\(Self.escape(tooltip))</title></rect>")
        } else {
            body.append("<rect \(attributes)/>")
        }
    }

    mutating func line(x1: Double, y1: Double, x2: Double, y2: Double, stroke: String, width: Double, dash: String? = nil) {
        body.append("<line x1=\"\(n(x1))\" y1=\"\(n(y1))\" x2=\"\(n(x2))\" y2=\"\(n(y2))\" stroke=\"\(stroke)\" stroke-width=\"\(n(width))\""
            + (dash.map { " stroke-dasharray=\"\($0)\"" } ?? "") + "/>")
    }

    /// Text anchored at (x, y): "start", "middle" or "end"; `rotate` turns it to run upwards.
    mutating func text(_ content: String, x: Double, y: Double, size: Double, anchor: String = "start", weight: String? = nil,
                       fill: String, rotate: Bool = false) {
        var attributes = "x=\"\(n(x))\" y=\"\(n(y))\" font-size=\"\(n(size))\" text-anchor=\"\(anchor)\" fill=\"\(fill)\""
        if let weight { attributes += " font-weight=\"\(weight)\"" }
        if rotate { attributes += " transform=\"rotate(-90 \(n(x)) \(n(y)))\"" }
        body.append("<text \(attributes)>\(Self.escape(content))</text>")
    }

    /// The whole document.
    func finish() -> String {
        let open = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(n(width))\" height=\"\(n(height))\" "
            + "viewBox=\"0 0 \(n(width)) \(n(height))\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">"
        return (["<?xml version=\"1.0\" encoding=\"UTF-8\"?>", open] + body.map { "  " + $0 } + ["</svg>", ""]).joined(separator: "\n")
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    private func n(_ x: Double) -> String {
        x == x.rounded() ? String(Int(x)) : String(format: "%.1f", x)
    }
}
