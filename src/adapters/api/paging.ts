import { invalid } from '../../core/errors.js';
import type { EncodedRecord, PageOptions } from '../../core/ports.js';

/**
 * Paging of ListMicroVMs (gRPC and HTTP alike), after Google's AIP-158: records in uid order (the
 * store's key; uids are ULIDs, so also in order of creation), each page starting after the last
 * uid of the previous one (keyset, never an offset), so a record that exists from the first page
 * to the last is returned exactly once whatever is created or deleted in between.
 */

/** The largest page_size honoured; larger values are taken as this (AIP-158: coerce, not refuse). */
export const MAX_PAGE_SIZE = 1000;

/**
 * A page also ends before it passes this many bytes of records (but always holds one): gRPC
 * clients refuse answers over 4 MiB by default (grpc-go, grpc-js, grpcio), and a page of large
 * records must still reach them.
 */
export const MAX_PAGE_BYTES = 3 * 1024 * 1024;

export interface ListPageRequest {
  namespace: string;
  name?: string | undefined;
  /** 0: no limit (flintlock's clients never send it); negative: refused. */
  pageSize: number;
  /** Empty: the first page. */
  pageToken: string;
}

export interface ListPage {
  records: Uint8Array[];
  /** Empty when this page is the last. */
  nextPageToken: string;
}

/** What reads the matching records: MicroVMService.encodedList. */
export type EncodedLister = (namespace: string, name: string | undefined, page: PageOptions) => Iterable<EncodedRecord>;

const TOKEN_VERSION = 'm1';

/**
 * The token is base64url of a version and the request's filter with the last uid sent: opaque
 * to clients, bound to the filter (AIP-158: a token used with other parameters is refused), and
 * valid as long as the store is, since it names a position, not a snapshot.
 */
function encodeToken(namespace: string, name: string, after: string): string {
  return Buffer.from(JSON.stringify([TOKEN_VERSION, namespace, name, after])).toString('base64url');
}

function decodeToken(req: ListPageRequest): string {
  const bad = () => invalid('page_token', 'is not a next_page_token this server returned; send it as it came, or leave it empty for the first page');
  if (!/^[A-Za-z0-9_-]{1,1400}$/.test(req.pageToken)) throw bad();
  let parts: unknown;
  try {
    parts = JSON.parse(Buffer.from(req.pageToken, 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  if (!Array.isArray(parts) || parts.length !== 4 || parts[0] !== TOKEN_VERSION || !parts.every((p) => typeof p === 'string') || parts[3] === '') throw bad();
  const [, namespace, name, after] = parts as string[];
  if (namespace !== req.namespace || name !== (req.name ?? '')) {
    throw invalid(
      'page_token',
      `was returned for namespace ${JSON.stringify(namespace)} and name ${JSON.stringify(name)}, not ${JSON.stringify(req.namespace)} and ${JSON.stringify(req.name ?? '')}; a token continues only the listing that returned it`,
    );
  }
  return after as string;
}

/**
 * One page of a listing. page_size 0 without a token is flintlock's List: every matching record,
 * no token. page_size 0 with a token: every record after it. Errors: INVALID_ARGUMENT naming
 * `page_size` (negative) or `page_token` (not ours, or from another filter), and the filter
 * errors of `list`.
 */
export function listPage(list: EncodedLister, req: ListPageRequest): ListPage {
  if (!Number.isInteger(req.pageSize) || req.pageSize < 0) {
    throw invalid('page_size', `must be 0 (no limit) or more (at most ${MAX_PAGE_SIZE} are returned), not ${req.pageSize}`);
  }
  const after = req.pageToken === '' ? undefined : decodeToken(req);
  const records: Uint8Array[] = [];
  if (req.pageSize === 0) {
    for (const r of list(req.namespace, req.name, { after })) records.push(r.encoded);
    return { records, nextPageToken: '' };
  }
  const limit = Math.min(req.pageSize, MAX_PAGE_SIZE);
  let bytes = 0;
  let last: string | undefined;
  let more = false;
  // One record past the page tells whether another page follows; breaking out of the loop
  // finishes the store's read.
  for (const r of list(req.namespace, req.name, { after, limit: limit + 1 })) {
    if (records.length === limit || (records.length > 0 && bytes + r.encoded.length > MAX_PAGE_BYTES)) {
      more = true;
      break;
    }
    records.push(r.encoded);
    bytes += r.encoded.length;
    last = r.uid;
  }
  return { records, nextPageToken: more && last !== undefined ? encodeToken(req.namespace, req.name ?? '', last) : '' };
}
