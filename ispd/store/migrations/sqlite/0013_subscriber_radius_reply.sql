-- A subscriber's own RADIUS reply attributes (a business line's Framed-Route, a static
-- Delegated-IPv6-Prefix), as FreeRADIUS's users file gives one user: a JSON array of
-- "Attribute = value" lines, checked against the dictionaries when they are set.
ALTER TABLE subscribers ADD COLUMN radius_reply TEXT NOT NULL DEFAULT '[]';
