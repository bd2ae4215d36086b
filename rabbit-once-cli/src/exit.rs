//! Exit statuses that mean one thing each, and how an error is sorted into one of them.

use std::fmt;
use std::process::ExitCode;

/// What the process's exit status says. Listed in `--help` ([`HELP`]) and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 0: everything was done (published and confirmed, applied, relayed).
    Success,
    /// 1: the run ended without doing all of its work: messages unconfirmed or refused, not
    /// applied, or a failure none of the other statuses names (a topology conflict, …).
    Incomplete,
    /// 2: the command line (or a `--from` line) is wrong: an unknown flag, a malformed URI, …
    Usage,
    /// 3: no session with the broker: wrong user or password (at the start, or on a reconnect:
    /// the connection gave up), unknown or refused vhost, or no broker reachable within
    /// `--connect-wait`.
    Connect,
    /// 4: the database (SQLite or PostgreSQL) could not be opened or migrated, or failed.
    Store,
}

impl Status {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Status::Success => 0,
            Status::Incomplete => 1,
            Status::Usage => 2,
            Status::Connect => 3,
            Status::Store => 4,
        }
    }
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> Self {
        ExitCode::from(s.code())
    }
}

/// The exit statuses, as `--help` shows them below the commands.
pub const HELP: &str = "\
Exit status:
  0  success: everything published was confirmed, everything consumed was applied
  1  incomplete: some messages unconfirmed or refused, some not applied (or another failure)
  2  usage: a bad flag or value, a malformed URI, a malformed --from line
  3  could not connect or authenticate: wrong user or password (at the start or on a
     reconnect), unknown vhost, no broker reachable within --connect-wait
  4  store error: the database could not be opened or migrated, or failed

Environment:
  The flags every command shares read RABBIT_ONCE_<FLAG> (dashes as underscores):
  RABBIT_ONCE_URI, RABBIT_ONCE_HEARTBEAT, RABBIT_ONCE_CONNECT_WAIT, RABBIT_ONCE_THREADS, and
  the databases RABBIT_ONCE_STORE, RABBIT_ONCE_OUTBOX (relay, outbox) and RABBIT_ONCE_SCHEMA.
  Every other flag reads RABBIT_ONCE_<COMMAND>_<FLAG>: RABBIT_ONCE_PUBLISH_QUEUE,
  RABBIT_ONCE_CONSUME_BATCH, RABBIT_ONCE_CHAOS_OUTBOX, RABBIT_ONCE_OUTBOX_STATUS_JSON, …
  (also publish --outbox: RABBIT_ONCE_PUBLISH_OUTBOX; chaos --store and --schema). bench
  reads none. `--help` names each flag's variable; a flag on the command line wins.
  RABBIT_ONCE_URI takes several URIs separated by commas (write a comma inside a URI as %2C).
  Switches take true/false, yes/no, on/off or 1/0; false is the same as not given. Values
  are never shown in --help.
  NO_COLOR (non-empty) turns colour off; colour is only ever written to a terminal.";

/// An error the command sorted itself, with the status it exits with.
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub status: Status,
    /// What went wrong, for stderr (never a password).
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A usage error (exit 2).
pub fn usage(message: impl fmt::Display) -> anyhow::Error {
    failure(Status::Usage, message)
}

/// A store error the command found itself (exit 4), e.g. an outbox that is not there.
pub fn store(message: impl fmt::Display) -> anyhow::Error {
    failure(Status::Store, message)
}

/// No session with the broker (exit 3).
pub fn connect(message: impl fmt::Display) -> anyhow::Error {
    failure(Status::Connect, message)
}

fn failure(status: Status, message: impl fmt::Display) -> anyhow::Error {
    Failure {
        status,
        message: message.to_string(),
    }
    .into()
}

/// The status an error exits with: the first error in its chain that says (a [`Failure`], a
/// library error, a database error) decides; anything else is [`Status::Incomplete`].
pub fn classify(e: &anyhow::Error) -> Status {
    e.chain()
        .find_map(|cause| {
            if let Some(f) = cause.downcast_ref::<Failure>() {
                Some(f.status)
            } else if let Some(e) = cause.downcast_ref::<rabbit_once::Error>() {
                library(e)
            } else if cause.downcast_ref::<rabbit_once::sqlx::Error>().is_some() {
                Some(Status::Store)
            } else {
                None
            }
        })
        .unwrap_or(Status::Incomplete)
}

/// The status of a library error, if its kind names one.
fn library(e: &rabbit_once::Error) -> Option<Status> {
    use rabbit_once::Error as E;
    match e {
        E::InvalidUri { .. } | E::Config(_) => Some(Status::Usage),
        E::AuthenticationFailed { .. }
        | E::VhostRefused { .. }
        | E::Connect { .. }
        | E::ConnectionLost(_)
        | E::ConnectionClosed { .. } => Some(Status::Connect),
        E::GaveUp { last, .. } => library(last),
        E::Store(_) => Some(Status::Store),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rabbit_once::Error as E;

    #[test]
    fn each_kind_of_error_has_its_status() {
        let auth = E::AuthenticationFailed {
            endpoint: "amqp://guest@h:5672/%2f".into(),
            user: "guest".into(),
            reason: "refused".into(),
        };
        assert_eq!(classify(&auth.clone().into()), Status::Connect);
        let gave_up = E::GaveUp {
            attempts: 3,
            last: Box::new(auth),
        };
        assert_eq!(classify(&gave_up.into()), Status::Connect);
        let bad_uri = E::InvalidUri {
            part: "scheme",
            reason: "x".into(),
        };
        assert_eq!(classify(&bad_uri.into()), Status::Usage);
        let store = E::Store(std::sync::Arc::new(std::io::Error::other("disk")));
        assert_eq!(
            classify(&anyhow::Error::from(store).context("opening the store")),
            Status::Store
        );
        assert_eq!(
            classify(&rabbit_once::sqlx::Error::PoolTimedOut.into()),
            Status::Store
        );
        assert_eq!(classify(&usage("bad line")), Status::Usage);
        assert_eq!(
            classify(&E::Topology("406".into()).into()),
            Status::Incomplete
        );
        assert_eq!(classify(&anyhow::anyhow!("other")), Status::Incomplete);
    }
}
