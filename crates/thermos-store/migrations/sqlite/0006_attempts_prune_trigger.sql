-- Each connection keeps its newest 50 attempts (ATTEMPTS_KEPT_PER_CONNECTION):
-- pruned by the database on insert, in the inserting statement, so a refresh
-- commit needs one statement less.
CREATE TRIGGER refresh_attempts_keep_newest AFTER INSERT ON refresh_attempts
BEGIN
    DELETE FROM refresh_attempts
     WHERE connection_id = NEW.connection_id
       AND id < (SELECT id FROM refresh_attempts WHERE connection_id = NEW.connection_id
                  ORDER BY id DESC LIMIT 1 OFFSET 49);
END;
