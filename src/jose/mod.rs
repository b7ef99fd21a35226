//! JOSE at the bottom of the stack: keys parsed once into ready verification keys, and JWS/JWT
//! parsing, signature and claim checks. Nothing here knows about routes, plugins or the IdP.

pub mod jwt;
pub mod keys;
