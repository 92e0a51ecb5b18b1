//! Sources: put events into a channel and acknowledge them to their sender only once the
//! commit is durable.
//!
//! - [`http`]: NDJSON bodies over HTTP; 200 after the durable commit.
//! - [`tail`]: lines of files followed by glob; the read position moves after the commit.

pub mod http;
pub mod tail;
