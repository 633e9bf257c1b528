import { parseDocument, stringify } from 'yaml';
import { invalid } from '../errors.js';

const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Metadata values arrive base64-encoded, except from clients such as `fl --metadata-from-file`
 * that send raw text. A value that is valid standard base64 is decoded; anything else is taken
 * as it is. (A raw text that happens to be valid base64, such as "abcd", is necessarily read as
 * base64: that ambiguity is flintlock's too.)
 */
export function decodeMetadataValue(value: string): Buffer {
  if (value.length > 0 && STRICT_BASE64.test(value)) return Buffer.from(value, 'base64');
  return Buffer.from(value, 'utf8');
}

/**
 * Makes sure meta-data carries `instance_id`, set to the VM's uid unless the client gave one.
 * CAPMVM never sends it, and its kubelet provider id is microvm://<vm_host>/<instance_id>:
 * without the injection no Kubernetes node ever matches its Machine. Every other key is kept.
 */
export function withInstanceId(metaData: Buffer | undefined, uid: string, field: string): Buffer {
  if (metaData === undefined || metaData.length === 0) return Buffer.from(stringify({ instance_id: uid }), 'utf8');
  const doc = parseDocument(metaData.toString('utf8'), { uniqueKeys: false });
  if (doc.errors.length > 0) {
    throw invalid(field, `must be a YAML mapping (${doc.errors[0]?.message.split('\n')[0] ?? 'parse error'})`);
  }
  const value: unknown = doc.toJS();
  if (value === null || value === undefined) return Buffer.from(stringify({ instance_id: uid }), 'utf8');
  if (typeof value !== 'object' || Array.isArray(value)) throw invalid(field, 'must be a YAML mapping of keys to values');
  if (doc.has('instance_id')) return metaData;
  doc.set('instance_id', uid);
  return Buffer.from(doc.toString(), 'utf8');
}
