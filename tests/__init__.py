"""
The tests of the SSA daemon.
"""
