-- Fencing tokens are handed out here, next to the highest token that wrote, instead of by a Redis
-- counter that a flush or a failover resets: a new holder's token is always above every token
-- issued or written before.
ALTER TABLE fencing_tokens ADD COLUMN issued BIGINT NOT NULL DEFAULT 0;
