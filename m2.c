#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
int main(){char b[4096];const char* cg[]={"/sys/fs/cgroup/unified/lbtest/cpu.stat","/sys/fs/cgroup/unified/lbtest/cgroup.procs","/sys/fs/cgroup/unified/lbtest/cgroup.events"};
for(int f=0;f<3;f++){double t=now();for(int i=0;i<20000;i++){int fd=open(cg[f],O_RDONLY);while(read(fd,b,4096)>0);close(fd);}printf("%s open+read: %.2f us\n",cg[f],(now()-t)/20000);
int fd=open(cg[f],O_RDONLY);t=now();for(int i=0;i<20000;i++){pread(fd,b,4096,0);}printf("%s pread: %.2f us  %d\n",cg[f],(now()-t)/20000, (int)pread(fd,b,4096,0));close(fd);}
return 0;}
