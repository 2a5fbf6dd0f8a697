//! Signals a user may choose as a process's `stop_signal`, named portably.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The signal sent to a process group to ask it to stop. The platform layer maps it to
/// the operating system's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum StopSignal {
    /// `SIGTERM`, the default: ask the process to terminate.
    #[default]
    Term,
    /// `SIGINT`, as from Ctrl-C.
    Int,
    /// `SIGQUIT`: quit, for programs that treat it as their stop request.
    Quit,
    /// `SIGHUP`: hang-up, for programs that stop on it.
    Hup,
    /// `SIGUSR1`: user-defined, for programs that stop on it.
    Usr1,
    /// `SIGUSR2`: user-defined, for programs that stop on it.
    Usr2,
    /// `SIGKILL`: end the process at once, with no chance to clean up.
    Kill,
}

impl StopSignal {
    /// The accepted signal names, in the form they are shown to the user.
    pub const NAMES: [&'static str; 7] = [
        "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL",
    ];

    /// The signal's name as the user writes it, e.g. `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
            StopSignal::Kill => "SIGKILL",
        }
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Accepts `SIGTERM`, `TERM` and `sigterm` alike.
impl FromStr for StopSignal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        Ok(match bare {
            "TERM" => StopSignal::Term,
            "INT" => StopSignal::Int,
            "QUIT" => StopSignal::Quit,
            "HUP" => StopSignal::Hup,
            "USR1" => StopSignal::Usr1,
            "USR2" => StopSignal::Usr2,
            "KILL" => StopSignal::Kill,
            _ => {
                return Err(format!(
                    "unknown signal `{s}`; expected one of {}",
                    StopSignal::NAMES.join(", ")
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_and_without_prefix() {
        assert_eq!("SIGTERM".parse::<StopSignal>().unwrap(), StopSignal::Term);
        assert_eq!("int".parse::<StopSignal>().unwrap(), StopSignal::Int);
        assert!("SIGFOO".parse::<StopSignal>().is_err());
    }
}
