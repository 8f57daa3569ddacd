-- What a suspended subscriber of the plan may still do with mail: 'read' (IMAP stays open for
-- the billing notices) or 'none'. Delivery goes on and submission is refused either way.
ALTER TABLE plans ADD COLUMN suspended_mail TEXT NOT NULL DEFAULT 'read'
    CHECK (suspended_mail IN ('read', 'none'));
