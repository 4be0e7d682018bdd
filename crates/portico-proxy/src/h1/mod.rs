//! The lean HTTP/1.1 path, split as hyper splits its `proto::h1`: `head` parses and encodes
//! message heads, `decode` holds the one `Framing` and the body decoder, `server` is the loop
//! plain client connections start in (anything unusual goes to hyper's server), `client` the
//! upstream exchange for bodiless requests (anything else goes to hyper's client).

pub(crate) mod client;
pub(crate) mod decode;
pub(crate) mod head;
pub(crate) mod server;
