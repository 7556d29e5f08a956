//! Docker label keys on every container Mofang manages. The agent finds its containers by
//! these labels after a restart, and never touches a container without its own node label.

/// The node (agent) that owns the container.
pub const NODE: &str = "mofang.node";
/// The database instance the member belongs to.
pub const INSTANCE: &str = "mofang.instance";
/// The member id.
pub const MEMBER: &str = "mofang.member";
/// The engine (`mariadb`, `redis`).
pub const ENGINE: &str = "mofang.engine";
/// Set on containers created by the test suite, so a crashed run's leftovers are removed.
pub const TEST: &str = "mofang.test";
/// The recipe hash of a locally built image.
pub const RECIPE: &str = "mofang.recipe";
/// On the Docker runtime's network-namespace holder: the member container whose namespace
/// (and so address) it keeps.
pub const NETNS_OF: &str = "mofang.netns-of";
