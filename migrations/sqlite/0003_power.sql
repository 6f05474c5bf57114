-- Last power state read from each node's BMC, and why the BMC could not be read.
ALTER TABLE nodes ADD COLUMN power_state TEXT;
ALTER TABLE nodes ADD COLUMN bmc_error TEXT;
ALTER TABLE nodes ADD COLUMN power_checked_at BIGINT;
