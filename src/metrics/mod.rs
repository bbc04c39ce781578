//! Metrics in the Prometheus text format (`GET /metrics` on the Operations API port).
//!
//! It only formats numbers other subsystems keep (per-core counters, writer statistics, map
//! usage); it keeps no state and takes no locks on a hot path.

use std::fmt::Write;

/// Builds one exposition document; each family is declared once with HELP and TYPE.
pub struct Exposition {
    out: String,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    pub fn new() -> Self {
        Exposition {
            out: String::with_capacity(4096),
        }
    }

    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample; `labels` as `(name, value)` pairs, values escaped per the format.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        if value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(self.out, " {}", value as i64);
        } else {
            let _ = writeln!(self.out, " {value}");
        }
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_format() {
        let mut e = super::Exposition::new();
        e.family("x_total", "counter", "Things.").sample(
            "x_total",
            &[("core", "0"), ("q", "a\"b")],
            3.0,
        );
        e.sample("x_total", &[], 0.5);
        assert_eq!(e.finish(), "# HELP x_total Things.\n# TYPE x_total counter\nx_total{core=\"0\",q=\"a\\\"b\"} 3\nx_total 0.5\n");
    }
}
