//! Collecting figures over runs, judging the machine's conditions, and printing the
//! table (Markdown, so it can go into `docs/benchmarks.md` as is) and the JSON.

use crate::procfs::{self, CpuTotals};
use crate::stats::Spread;
use comfy_table::{presets::ASCII_MARKDOWN, Table};
use serde_json::{json, Value};

/// Load average and steal time at the start of a measurement.
pub struct Watch {
    load: Option<f64>,
    cpu: Option<CpuTotals>,
}

/// The machine's conditions over a measurement.
pub struct Conditions {
    /// One-minute load average before and after.
    pub load: (Option<f64>, Option<f64>),
    /// Steal time over the measurement, in percent.
    pub steal_percent: Option<f64>,
    /// Cores available to this process.
    pub cores: usize,
    /// Load average ≤ cores and steal ≤ 5 % throughout.
    pub trusted: bool,
}

impl Watch {
    /// Notes the conditions now.
    pub fn start() -> Watch {
        Watch {
            load: procfs::load_average(),
            cpu: procfs::cpu_totals(),
        }
    }

    /// Compares with the conditions now.
    pub fn finish(&self) -> Conditions {
        let after = procfs::load_average();
        let steal_percent = match (self.cpu, procfs::cpu_totals()) {
            (Some(a), Some(b)) => Some(a.steal_percent_until(&b)),
            _ => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let worst_load = self.load.unwrap_or(0.0).max(after.unwrap_or(0.0));
        Conditions {
            load: (self.load, after),
            steal_percent,
            cores,
            trusted: worst_load <= cores as f64 && steal_percent.unwrap_or(0.0) <= 5.0,
        }
    }
}

impl Conditions {
    /// One line for the report.
    pub fn describe(&self) -> String {
        let f = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.2}"));
        format!(
            "load average {} before, {} after ({} cores); steal {}% over the whole run",
            f(self.load.0),
            f(self.load.1),
            self.cores,
            f(self.steal_percent)
        )
    }
}

/// One figure: its values over runs for the manager and (where there is one) the floor.
#[derive(Debug)]
struct Figure {
    name: &'static str,
    n: Option<usize>,
    unit: &'static str,
    manager: Vec<f64>,
    floor: Vec<f64>,
    untrusted_runs: usize,
}

/// Every figure of the run, in the order first measured.
pub struct Results {
    command: String,
    figures: Vec<Figure>,
}

impl Results {
    /// Empty results for `command`.
    pub fn new(command: String) -> Results {
        Results {
            command,
            figures: Vec::new(),
        }
    }

    fn entry(&mut self, name: &'static str, n: Option<usize>, unit: &'static str) -> &mut Figure {
        let at = match self.figures.iter().position(|f| f.name == name && f.n == n) {
            Some(at) => at,
            None => {
                self.figures.push(Figure {
                    name,
                    n,
                    unit,
                    manager: Vec::new(),
                    floor: Vec::new(),
                    untrusted_runs: 0,
                });
                self.figures.len() - 1
            }
        };
        &mut self.figures[at]
    }

    /// Adds one run's value for the manager.
    pub fn manager(
        &mut self,
        name: &'static str,
        n: Option<usize>,
        unit: &'static str,
        value: f64,
        trusted: bool,
    ) {
        let f = self.entry(name, n, unit);
        f.manager.push(value);
        f.untrusted_runs += usize::from(!trusted);
    }

    /// Adds one run's value for the floor.
    pub fn floor(
        &mut self,
        name: &'static str,
        n: Option<usize>,
        unit: &'static str,
        value: f64,
        trusted: bool,
    ) {
        let f = self.entry(name, n, unit);
        f.floor.push(value);
        if f.manager.is_empty() {
            f.untrusted_runs += usize::from(!trusted);
        }
    }

    /// The Markdown table.
    pub fn table(&self) -> String {
        let mut table = Table::new();
        table.load_preset(ASCII_MARKDOWN);
        table.set_header([
            "figure", "N", "manager", "spread", "floor", "× floor", "trust",
        ]);
        for f in &self.figures {
            let manager = Spread::of(&f.manager);
            let floor = Spread::of(&f.floor);
            table.add_row([
                f.name.to_string(),
                f.n.map_or("–".into(), |n| n.to_string()),
                manager.map_or("–".into(), |s| {
                    format!("{} {}", fmt_value(s.median), f.unit)
                }),
                manager.map_or("–".into(), |s| spread_text(&s, f.manager.len())),
                floor.map_or("–".into(), |s| {
                    format!("{} {}", fmt_value(s.median), f.unit)
                }),
                ratio(manager, floor).map_or("–".into(), |r| format!("{}×", fmt_value(r))),
                if f.untrusted_runs > 0 {
                    format!(
                        "loaded ({}/{} runs)",
                        f.untrusted_runs,
                        f.manager.len().max(f.floor.len())
                    )
                } else {
                    "ok".into()
                },
            ]);
        }
        table.to_string()
    }

    /// Everything as JSON.
    pub fn json(&self, conditions: &Conditions, settings: &str) -> Value {
        let spread = |values: &[f64]| {
            Spread::of(values)
                .map(|s| json!({"median": s.median, "min": s.min, "max": s.max, "runs": values}))
        };
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                json!({
                    "figure": f.name,
                    "n": f.n,
                    "unit": f.unit,
                    "manager": spread(&f.manager),
                    "floor": spread(&f.floor),
                    "ratio_to_floor": ratio(Spread::of(&f.manager), Spread::of(&f.floor)),
                    "untrusted_runs": f.untrusted_runs,
                })
            })
            .collect();
        json!({
            "command": self.command,
            "settings": settings,
            "machine": {
                "cores": conditions.cores,
                "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                "cpu_model": cpu_model(),
            },
            "conditions": {
                "load_average_before": conditions.load.0,
                "load_average_after": conditions.load.1,
                "steal_percent": conditions.steal_percent,
                "trusted": conditions.trusted,
            },
            "figures": figures,
        })
    }
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn ratio(manager: Option<Spread>, floor: Option<Spread>) -> Option<f64> {
    let (m, f) = (manager?.median, floor?.median);
    (f > 0.0).then(|| m / f)
}

fn spread_text(s: &Spread, runs: usize) -> String {
    if runs < 2 {
        "1 run".into()
    } else {
        format!("{}–{}", fmt_value(s.min), fmt_value(s.max))
    }
}

/// Three significant figures or so, never more than three decimals.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if v.is_nan() {
        "–".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_about_three_figures() {
        assert_eq!(fmt_value(1234.4), "1234");
        assert_eq!(fmt_value(42.06), "42.1");
        assert_eq!(fmt_value(4.216), "4.22");
        assert_eq!(fmt_value(0.31234), "0.312");
        assert_eq!(fmt_value(f64::NAN), "–");
    }

    #[test]
    fn table_has_a_ratio_and_marks_loaded_runs() {
        let mut r = Results::new("hsu-bench".into());
        r.manager("crash → restart, median", Some(200), "ms", 4.0, true);
        r.manager("crash → restart, median", Some(200), "ms", 6.0, false);
        r.floor("crash → restart, median", Some(200), "ms", 0.5, true);
        r.manager("RSS, no processes", None, "MiB", 5.0, true);
        let t = r.table();
        let row = t.lines().find(|l| l.contains("crash")).unwrap();
        assert!(row.contains("5.00 ms"), "{row}");
        assert!(row.contains("4.00–6.00"), "{row}");
        assert!(row.contains("10.0×"), "{row}");
        assert!(row.contains("loaded (1/2 runs)"), "{row}");
        let row = t.lines().find(|l| l.contains("RSS")).unwrap();
        assert!(row.contains("| – ") && row.contains("ok"), "{row}");
    }
}
