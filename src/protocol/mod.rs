//! The native wire protocol: frames and their sans-IO codec (bytes in,
//! frames out), and destination names.

mod destination;

pub use destination::{DESTINATION_NAME_BYTES_MAX, Destination, DestinationError, DestinationKind};
