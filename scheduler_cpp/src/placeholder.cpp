int pipeedge_sched_placeholder() { return 0; }
