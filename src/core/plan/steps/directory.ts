import { failedPrecondition } from '../../errors.js';
import type { HostFiles } from '../../ports.js';
import type { Step } from '../step.js';

/** A directory the VM's files live in (its VM directory, its run directory for sockets). */
export class EnsureDirectory implements Step {
  readonly name: string;
  constructor(
    private readonly files: HostFiles,
    private readonly path: string,
    what: string,
  ) {
    this.name = what;
  }
  async needed(): Promise<boolean> {
    return !(await this.files.exists(this.path));
  }
  async run(): Promise<void> {
    await this.files.mkdirp(this.path);
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`${this.path} was not created`);
  }
}

/** Removes a directory tree; removing one that is not there is not needed. */
export class RemoveDirectory implements Step {
  readonly name: string;
  constructor(
    private readonly files: HostFiles,
    private readonly path: string,
    what: string,
  ) {
    this.name = `remove ${what}`;
  }
  async needed(): Promise<boolean> {
    return this.files.exists(this.path);
  }
  async run(): Promise<void> {
    await this.files.remove(this.path);
  }
  async verify(): Promise<void> {
    if (await this.needed()) throw failedPrecondition(`${this.path} is still there`);
  }
}
