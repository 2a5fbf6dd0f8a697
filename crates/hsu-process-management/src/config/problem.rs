//! One problem found in a config file, and the list of all of them.

use std::fmt;

/// A single problem, located in the file and in the config's structure.
///
/// Displays as `FILE:LINE:COL: dotted.path: message` (the path is left out when the
/// problem concerns the file as a whole, e.g. a YAML syntax error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// Dotted path of the offending key, e.g. `managed_processes[2].management.control`.
    pub path: String,
    /// What is wrong, in words for the user.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config, in file order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
