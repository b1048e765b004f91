"""The results side: the runs tree read back, interval estimates, and the reports in results/."""
