-- The fleet page's "commands in flight": the most recent open commands, fleet-wide, without a
-- sort over every open command.
CREATE INDEX commands_open_created ON commands (created_ms DESC)
    WHERE status IN ('queued', 'delivered', 'running');
