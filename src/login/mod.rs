//! Login: proving who the person at the browser is. Local accounts today; identity providers
//! and database accounts plug in beside them later.

mod local;

pub use local::{LocalAccounts, LoginOutcome, validate_profile, validate_username};
