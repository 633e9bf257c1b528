import { parentPort } from 'node:worker_threads';
import { MatchlockError } from '../../core/errors.js';
import { cloudInitMetaData, decodeMetadataValue } from '../../core/microvm/metadata.js';

/** A reading asked for by WorkerMetaDataReader: the meta-data entry as sent, the VM's uid, the field to name. */
export interface ReadJob {
  id: number;
  value: string;
  uid: string;
  field: string;
}

/** Its answer: the bytes cloudInitMetaData made, or the refusal it threw, by code, message and field. */
export type ReadAnswer = { id: number; ok: true; metaData: Uint8Array } | { id: number; ok: false; code: string; message: string; field: string | undefined };

// The thread's whole work: each job read as validateSpec reads the entry in line (decoded the
// same way), one after the other.
parentPort?.on('message', (job: ReadJob) => {
  let answer: ReadAnswer;
  try {
    answer = { id: job.id, ok: true, metaData: cloudInitMetaData(decodeMetadataValue(job.value), job.uid, job.field) };
  } catch (err) {
    const e = MatchlockError.from(err);
    answer = { id: job.id, ok: false, code: e.code, message: e.message, field: e.field };
  }
  parentPort?.postMessage(answer);
});
