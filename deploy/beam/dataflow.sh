#!/usr/bin/env bash
# Score an archive on Dataflow: `covidxray score-archive` from .venv-beam (`make beam-install`), its
# workers in the custom container of deploy/beam/Dockerfile, running as their own service account.
#   PROJECT_ID=acme-xray REGION=europe-west1 BUCKET=acme-xray-archive INPUT='gs://acme-pacs-export/**.dcm' \
#     deploy/beam/dataflow.sh
# Writes gs://$BUCKET/scores/$RUN-results-*.jsonl and -errors-*.jsonl; re-running with the same RUN
# rewrites the same shards (no duplicate lines). Arguments go to Beam: `--dry_run=True` builds the
# Dataflow job and submits nothing (the test suite does that), `--bigquery=P.D.T` adds the table.
set -euo pipefail
: "${PROJECT_ID:?set PROJECT_ID}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (output and temp files)}"
: "${INPUT:?set INPUT, a gs:// pattern of the films to score}"
RUN="${RUN:-$(date -u +%Y%m%d)}"
IMAGE="${IMAGE:-$REGION-docker.pkg.dev/$PROJECT_ID/covidxray/archive-worker:latest}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-covidxray-archive@$PROJECT_ID.iam.gserviceaccount.com}"
cd "$(dirname "$0")/../.."

exec .venv-beam/bin/covidxray score-archive \
  --runner DataflowRunner \
  --input "$INPUT" \
  --output "gs://$BUCKET/scores/$RUN" \
  --shards "${SHARDS:-64}" \
  --max-batch-size 32 \
  --project="$PROJECT_ID" \
  --region="$REGION" \
  --job_name="covidxray-archive-${RUN//[^0-9a-z]/-}" \
  --temp_location="gs://$BUCKET/tmp" \
  --staging_location="gs://$BUCKET/staging" \
  --sdk_container_image="$IMAGE" \
  --sdk_location=container \
  --service_account_email="$SERVICE_ACCOUNT" \
  --machine_type="${MACHINE_TYPE:-n2-standard-4}" \
  --max_num_workers="${MAX_WORKERS:-20}" \
  --experiments=use_runner_v2 \
  "$@"
