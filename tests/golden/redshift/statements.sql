-- create_table
CREATE TABLE "analytics"."orders" ("id" BIGINT NOT NULL, "line" INTEGER NOT NULL, "note" VARCHAR(160), "doc" SUPER, "blob" VARBYTE(65535), "we""ird; name" DECIMAL(12,2), PRIMARY KEY ("id", "line"));

-- create_table_physical
CREATE TABLE "analytics"."orders" ("id" BIGINT NOT NULL, "line" INTEGER NOT NULL, "note" VARCHAR(160), "doc" SUPER, "blob" VARBYTE(65535), "we""ird; name" DECIMAL(12,2), PRIMARY KEY ("id", "line")) DISTSTYLE KEY DISTKEY ("id") COMPOUND SORTKEY ("id", "line");

-- create_table_even
CREATE TABLE "analytics"."orders" ("id" BIGINT NOT NULL, "line" INTEGER NOT NULL, "note" VARCHAR(160), "doc" SUPER, "blob" VARBYTE(65535), "we""ird; name" DECIMAL(12,2), PRIMARY KEY ("id", "line")) DISTSTYLE EVEN;

-- create_table_history
CREATE TABLE "analytics"."orders" ("id" BIGINT NOT NULL, "line" INTEGER NOT NULL, "note" VARCHAR(160), "doc" SUPER, "blob" VARBYTE(65535), "we""ird; name" DECIMAL(12,2), "_op" CHAR(1), "_position" VARCHAR(4096), "_valid_from" TIMESTAMPTZ, "_valid_to" TIMESTAMPTZ);

-- create_checkpoints
CREATE TABLE IF NOT EXISTS "analytics"."_zetl_checkpoints" ("integration" VARCHAR(256) NOT NULL, "position" VARCHAR(65535) NOT NULL, "updated_at" TIMESTAMP NOT NULL, "writer_epoch" BIGINT DEFAULT 0, PRIMARY KEY ("integration"));

-- create_metadata
CREATE TABLE IF NOT EXISTS "analytics"."_zetl_tables" ("target_table" VARCHAR(512) NOT NULL, "layout" VARCHAR(65535) NOT NULL, "updated_at" TIMESTAMP NOT NULL, PRIMARY KEY ("target_table"));

-- add_column
ALTER TABLE "analytics"."orders" ADD COLUMN "doc" SUPER;

-- alter_varchar
ALTER TABLE "analytics"."orders" ALTER COLUMN "note" TYPE VARCHAR(160);

-- swap_copy_column
UPDATE "analytics"."orders" SET "zetl_swap_line" = CAST("line" AS BIGINT);

-- create_stage
CREATE TEMP TABLE "zetl_stage_1" ("c0" BIGINT, "c1" INTEGER, "c2" VARCHAR(160), "c3" SUPER, "c4" VARCHAR(65535), "c5" DECIMAL(12,2), "_zetl_op" CHAR(1) NOT NULL, "_zetl_keep_2" BOOLEAN);

-- insert_into_stage
INSERT INTO "zetl_stage_1" ("c0", "c1", "c2", "c3", "c4", "c5", "_zetl_op", "_zetl_keep_2") VALUES (%s, %s, %s, JSON_PARSE(%s), %s, %s, %s, %s), (%s, %s, %s, JSON_PARSE(%s), %s, %s, %s, %s);

-- copy_into_stage
COPY "zetl_stage_1" ("c0", "c1", "c2", "c3", "c4", "c5", "_zetl_op", "_zetl_keep_2") FROM 's3://bucket/zetl/it/b1/manifest.json' IAM_ROLE 'arn:aws:iam::123456789012:role/copy' FORMAT AS JSON 's3://bucket/zetl/it/b1/jsonpaths.json' MANIFEST GZIP TIMEFORMAT 'auto' DATEFORMAT 'auto' REGION 'eu-west-1';

-- copy_into_stage_default_role
COPY "zetl_stage_1" ("c0", "c1", "c2", "c3", "c4", "c5", "_zetl_op", "_zetl_keep_2") FROM 's3://bucket/m' IAM_ROLE default FORMAT AS JSON 's3://bucket/j' MANIFEST GZIP TIMEFORMAT 'auto' DATEFORMAT 'auto';

-- fill_unchanged
UPDATE "zetl_stage_1" SET "c2" = cur."note" FROM "analytics"."orders" AS cur WHERE cur."id" = "zetl_stage_1"."c0" AND cur."line" = "zetl_stage_1"."c1" AND "zetl_stage_1"."_zetl_keep_2";

-- delete_matching
DELETE FROM "analytics"."orders" USING "zetl_stage_1" WHERE "analytics"."orders"."id" = "zetl_stage_1"."c0" AND "analytics"."orders"."line" = "zetl_stage_1"."c1" AND "zetl_stage_1"."_zetl_op" = 'd';

-- merge
MERGE INTO "analytics"."orders" USING "zetl_stage_1" ON "analytics"."orders"."id" = "zetl_stage_1"."c0" AND "analytics"."orders"."line" = "zetl_stage_1"."c1" WHEN MATCHED THEN UPDATE SET "note" = "zetl_stage_1"."c2", "doc" = "zetl_stage_1"."c3", "blob" = TO_VARBYTE("zetl_stage_1"."c4", 'hex'), "we""ird; name" = "zetl_stage_1"."c5" WHEN NOT MATCHED THEN INSERT ("id", "line", "note", "doc", "blob", "we""ird; name") VALUES ("zetl_stage_1"."c0", "zetl_stage_1"."c1", "zetl_stage_1"."c2", "zetl_stage_1"."c3", TO_VARBYTE("zetl_stage_1"."c4", 'hex'), "zetl_stage_1"."c5");

-- delete_all
DELETE FROM "analytics"."orders";

-- history_fill_unchanged
UPDATE "zetl_stage_2" SET "c3" = cur."doc" FROM "analytics"."orders" AS cur WHERE cur."id" = "zetl_stage_2"."c0" AND cur."line" = "zetl_stage_2"."c1" AND "zetl_stage_2"."_zetl_keep_3" AND cur."_valid_to" IS NULL;

-- history_close_versions
UPDATE "analytics"."orders" SET "_valid_to" = "zetl_stage_2"."_zetl_valid_from" FROM "zetl_stage_2" WHERE "analytics"."orders"."id" = "zetl_stage_2"."c0" AND "analytics"."orders"."line" = "zetl_stage_2"."c1" AND "zetl_stage_2"."_zetl_first" AND "analytics"."orders"."_valid_to" IS NULL;

-- history_insert_versions
INSERT INTO "analytics"."orders" ("id", "line", "note", "doc", "blob", "we""ird; name", "_op", "_position", "_valid_from", "_valid_to") SELECT s."c0", s."c1", s."c2", s."c3", TO_VARBYTE(s."c4", 'hex'), s."c5", s."_zetl_op", s."_zetl_position", s."_zetl_valid_from", s."_zetl_valid_to" FROM "zetl_stage_2" AS s;

-- history_close_all
UPDATE "analytics"."orders" SET "_valid_to" = %s WHERE "_valid_to" IS NULL;

-- checkpoint_add_epoch
ALTER TABLE "analytics"."_zetl_checkpoints" ADD COLUMN "writer_epoch" BIGINT DEFAULT 0;

-- checkpoint_fence
UPDATE "analytics"."_zetl_checkpoints" SET "writer_epoch" = %s WHERE "integration" = %s AND COALESCE("writer_epoch", 0) <= %s;

-- checkpoint_update
UPDATE "analytics"."_zetl_checkpoints" SET "position" = %s, "writer_epoch" = GREATEST(COALESCE("writer_epoch", 0), %s), "updated_at" = GETDATE() WHERE "integration" = %s;

-- checkpoint_insert
INSERT INTO "analytics"."_zetl_checkpoints" ("integration", "position", "writer_epoch", "updated_at") VALUES (%s, %s, %s, GETDATE());

