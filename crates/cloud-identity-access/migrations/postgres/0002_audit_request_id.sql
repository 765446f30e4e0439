-- expand: the request id (x-request-id) of the API request that made each change, to find the
-- change's request in logs and traces. Nullable: the previous release writes no value, and its
-- events keep none. Not part of an event's hash, so that the previous release, whose hash has
-- no such field, still verifies a chain this release wrote (a rollback).
ALTER TABLE audit_events ADD COLUMN request_id TEXT;
