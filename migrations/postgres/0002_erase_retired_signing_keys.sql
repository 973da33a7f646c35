-- A retired signing key is no longer published or used: its private half has no reason to
-- stay in the store (retiring erases it from now on; this erases what earlier retirements left).
UPDATE signing_keys SET pkcs8 = '\x'::bytea WHERE retired_at IS NOT NULL;
