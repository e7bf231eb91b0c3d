//! The stress report: per stage, what was measured against which threshold,
//! PASS or FAIL, written as markdown to `target/stress/report.md`.

use std::fmt::Write as _;

/// The most lines of an error the report quotes.
const ERROR_LINES: usize = 60;

/// One measured figure held against its threshold.
struct Check {
    figure: String,
    measured: String,
    threshold: String,
    pass: bool,
}

/// One stage (or one fault) of the run.
pub struct Section {
    title: String,
    about: String,
    tables: Vec<String>,
    checks: Vec<Check>,
    errors: Vec<String>,
}

impl Section {
    /// A section titled `title`, opening with `about` (how it was measured).
    pub fn new(title: &str, about: String) -> Self {
        Self {
            title: title.to_owned(),
            about,
            tables: Vec::new(),
            checks: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Records a figure: what it is, what was measured, the threshold it is
    /// held to, and whether it meets it.
    pub fn check(&mut self, figure: &str, measured: String, threshold: &str, pass: bool) {
        self.checks.push(Check {
            figure: figure.to_owned(),
            measured,
            threshold: threshold.to_owned(),
            pass,
        });
    }

    /// Adds a markdown table of raw measurements (shown before the checks).
    pub fn table(&mut self, markdown: String) {
        self.tables.push(markdown);
    }

    /// Records that the stage could not run to its end: a FAIL, with why.
    pub fn failed(&mut self, error: String) {
        self.check(
            "stage ran to its end",
            "no (see the error below)".to_owned(),
            "yes",
            false,
        );
        // Envoy's errors carry its whole log; its end says what went wrong.
        let lines: Vec<&str> = error.lines().collect();
        let kept = lines.len().saturating_sub(ERROR_LINES);
        let mut text = lines.get(kept..).unwrap_or_default().join("\n");
        if kept > 0 {
            text.insert_str(0, &format!("[{kept} earlier lines left out]\n"));
        }
        self.errors.push(text);
    }

    /// The number of failed checks.
    fn failures(&self) -> usize {
        self.checks.iter().filter(|c| !c.pass).count()
    }
}

/// The whole run.
pub struct Report {
    environment: Vec<(String, String)>,
    sections: Vec<Section>,
}

impl Report {
    /// A report on a run in this environment (name, value pairs).
    pub fn new(environment: Vec<(String, String)>) -> Self {
        Self {
            environment,
            sections: Vec::new(),
        }
    }

    /// Adds a finished section.
    pub fn add(&mut self, section: Section) {
        let failures = section.failures();
        eprintln!(
            "stress: {}: {}",
            section.title,
            if failures == 0 {
                "PASS".to_owned()
            } else {
                format!("FAIL ({failures} figures)")
            }
        );
        self.sections.push(section);
    }

    /// The number of failed checks over all sections.
    pub fn failures(&self) -> usize {
        self.sections.iter().map(Section::failures).sum()
    }

    /// The report as markdown.
    pub fn render(&self) -> String {
        let checks: usize = self.sections.iter().map(|s| s.checks.len()).sum();
        let failures = self.failures();
        let mut out = String::from("# Stress report\n\n");
        let _ = writeln!(
            out,
            "**{}**: {} of {checks} figures within their thresholds.\n",
            if failures == 0 && checks > 0 {
                "PASS"
            } else {
                "FAIL"
            },
            checks - failures
        );
        out.push_str("| stage | result |\n|---|---|\n");
        for section in &self.sections {
            let failed = section.failures();
            let _ = writeln!(
                out,
                "| {} | {} |",
                section.title,
                if failed == 0 {
                    "PASS".to_owned()
                } else {
                    format!("FAIL ({failed} of {})", section.checks.len())
                }
            );
        }
        out.push_str("\n## Environment\n\n| | |\n|---|---|\n");
        for (name, value) in &self.environment {
            let _ = writeln!(out, "| {name} | {} |", cell(value));
        }
        for section in &self.sections {
            let _ = write!(out, "\n## {}\n\n{}\n\n", section.title, section.about);
            for table in &section.tables {
                out.push_str(table);
                out.push('\n');
            }
            out.push_str("| figure | measured | threshold | result |\n|---|---|---|---|\n");
            for check in &section.checks {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    cell(&check.figure),
                    cell(&check.measured),
                    cell(&check.threshold),
                    if check.pass { "PASS" } else { "**FAIL**" }
                );
            }
            for error in &section.errors {
                let _ = write!(out, "\n```\n{}\n```\n", error.trim_end());
            }
        }
        out
    }
}

/// Text made safe for one markdown table cell.
pub fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
