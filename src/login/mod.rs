//! Login: proving who the person at the browser is, through login sources ([`source`]):
//! local accounts today; identity providers and database accounts plug in beside them.
//! What a source keeps for later is sealed to the grant ([`context`]).

pub mod context;
mod local;
pub mod oidc;
pub mod source;

pub use context::LoginContexts;
pub use local::{LocalAccounts, LoginOutcome, validate_profile, validate_username};
pub use source::{
    Attempt, Authenticated, Departure, FirstSignIn, LOCAL, LocalSource, LoginSource, LoginSources,
    Renewal, SourceKind,
};
