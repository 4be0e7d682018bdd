//! The lean HTTP/1.1 path, split as hyper splits its `proto::h1`: `server` is the loop
//! plain client connections start in (anything unusual goes to hyper's server), `client`
//! the upstream exchange for bodiless requests (anything else goes to hyper's client).

pub(crate) mod client;
pub(crate) mod server;
