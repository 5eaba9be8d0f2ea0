"""Progressive delivery: traffic in steps after the 0 % canary, each step judged against the
stable revision over the same window, with a human gate where the target asks for one."""
