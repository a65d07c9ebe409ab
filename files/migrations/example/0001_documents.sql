-- An example migration (copy it up into files/migrations/ to use it; files in subfolders
-- are never applied). It runs once, as the app role, inside a transaction the deploy opens
-- and commits, so: no BEGIN/COMMIT here, and everything created is owned by the app role.
-- The app's database was made from template1, so the vector extension is already there.
CREATE TABLE documents (
    id         bigserial PRIMARY KEY,
    content    text NOT NULL,
    embedding  vector(3) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
