//! Deployments, decided without I/O: the environment definitions a repository declares
//! (`settings`), the `deploy_on` mapping of refs to environments applied to a plan
//! (`mapping`), the health verdict of one instance from its probe results (`health`), and
//! the state machine of one deployment (`machine`): given what the engine observed
//! ("instance 2 of the new release is healthy"), what it must do next ("send all traffic
//! to the new release"). The engine in `slipway-deploy` performs the I/O and feeds the
//! facts back, so every strategy's decisions are unit-tested and fuzzed here.
//!
//! Protection rules (approvals, allowed branches, wait timers) are server settings and are
//! deliberately absent: a push must not be able to weaken them.

pub mod health;
pub mod machine;
pub mod mapping;
pub mod settings;

pub use settings::{parse_settings, DeploySettings, EnvironmentDef};
