//! placeholder

pub mod nip11;
pub mod relay;
pub mod store;
