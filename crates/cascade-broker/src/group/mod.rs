//! Consumer groups: the assignors, the per-group membership state machine, and the
//! coordinator that persists committed offsets.

pub mod assignor;
pub mod coordinator;
pub mod managed;
pub mod state;

pub use assignor::{Assignor, Tp};
pub use coordinator::{Committed, GroupCoordinator, GroupView, OFFSETS_TOPIC};
pub use managed::{InstanceConfig, InstanceView, ManagedConsumers, Reset};
pub use state::{Group, HeartbeatIn, HeartbeatOut, Member};
