"""
The SSA kernel module's generic netlink protocol (family C{"SSA"},
version 1, the "K" dialect of C{research/netlink.md}): a sans-IO codec
(L{ssa.netlink.wire}) and a transport over a real netlink socket
(L{ssa.netlink.transport}).
"""
