//! What the engine's processes say to each other, named once: the descriptor numbers a
//! parent hands its child, and the typed messages on each control channel.

/// Descriptor numbers a child finds at exec.
pub mod fds {
    /// The control socket (holder, monitor) or the ready pipe (a detached `up`).
    pub const CONTROL: i32 = 3;
    /// The monitor's second descriptor: the service's network namespace. The spec names it
    /// `/proc/self/fd/4`, which libcontainer's init (the monitor's child) inherits.
    pub const NETNS: i32 = 4;
}
